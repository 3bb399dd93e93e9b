"""An environment of your own for impala_tf: a corridor to walk to its right end.

The walker starts in the middle of a corridor of `length` cells; action 0 steps left, 1
stays, 2 steps right. Reaching the right end pays +1 and ends the episode, reaching the left
end pays -1 and ends it; after `time_limit` steps the episode is cut (truncation: discount
stays 1, so the learner bootstraps). The observation is a one-row image of the corridor with
the walker's cell lit.

Importing this module registers the kind 'corridor'; `corridor.gin` imports it and names it.
The walk-through is docs/environments.md.
"""

import dm_env
import gin
import numpy as np
from dm_env import specs

from impala_tf.envs.base import SequentialBatchedEnv
from impala_tf.envs.factory import register_environment

LEFT, STAY, RIGHT = 0, 1, 2


class Corridor(dm_env.Environment):
    """One corridor as a dm_env.Environment (observation `frame`: uint8 `[1, length, 1]`)."""

    def __init__(self, length: int = 7, time_limit: int = 20, seed: int = 0):
        if length < 3:
            raise ValueError(f"A corridor needs at least 3 cells, got {length}.")
        self._length, self._time_limit = length, time_limit
        self._rng = np.random.default_rng(seed)  # unused by the dynamics; kept for variants
        self._position = self._steps = 0

    def reset(self) -> dm_env.TimeStep:
        self._position, self._steps = self._length // 2, 0
        return dm_env.restart(self._observation())

    def step(self, action) -> dm_env.TimeStep:
        self._position += {LEFT: -1, STAY: 0, RIGHT: 1}[int(action)]
        self._steps += 1
        if self._position == self._length - 1:
            return dm_env.termination(1.0, self._observation())
        if self._position == 0:
            return dm_env.termination(-1.0, self._observation())
        if self._steps >= self._time_limit:
            return dm_env.truncation(0.0, self._observation())
        return dm_env.transition(0.0, self._observation())

    def _observation(self):
        frame = np.zeros([1, self._length, 1], np.uint8)
        frame[0, self._position, 0] = 255
        return {"frame": frame}

    def observation_spec(self):
        return {"frame": specs.BoundedArray([1, self._length, 1], np.uint8, 0, 255,
                                            name="frame")}

    def action_spec(self):
        return specs.DiscreteArray(3, name="action")


@gin.configurable
def make_corridors(num_envs: int, seed: int = 0, mode: str = "train", actor_index: int = 0,
                   length: int = 7, time_limit: int = 20):
    """K corridors stepped one after another (`SequentialBatchedEnv` batches single dm_env
    environments); environment i seeded `seed + i`. `mode` and `actor_index` are unused:
    a corridor has no evaluation protocol and no levels."""
    del mode, actor_index
    envs = [Corridor(length, time_limit, seed + i) for i in range(num_envs)]
    return SequentialBatchedEnv(envs, frames_per_step=1, levels=["corridor"] * num_envs)


register_environment("corridor", make_corridors)
