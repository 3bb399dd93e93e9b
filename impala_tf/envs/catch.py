"""Catch: a ball falls down a grid one row per step; the paddle on the bottom row must be
under it when it lands (+1, else -1, and the episode ends). Tiny and fast: the end-to-end
learning tests train on it in seconds.

Observation `frame`: uint8 `[rows, columns, 1]`, 255 where the ball and the paddle are.
Actions: 0 left, 1 stay, 2 right. An episode lasts `rows - 1` steps; the optimal return is 1.
"""

import dm_env
import gin
import numpy as np
from dm_env import specs

from impala_tf.envs.base import SequentialBatchedEnv

NUM_ACTIONS = 3


class Catch(dm_env.Environment):
    """The classic Catch game as a dm_env.Environment."""

    def __init__(self, rows: int = 10, columns: int = 5, seed: int = 0):
        if rows < 2 or columns < 1:
            raise ValueError(f"Catch needs rows >= 2 and columns >= 1, got {rows}x{columns}.")
        self._rows, self._columns = rows, columns
        self._rng = np.random.default_rng(seed)
        self._ball_row = self._ball_column = self._paddle_column = 0
        self._started = False

    def reset(self) -> dm_env.TimeStep:
        self._ball_row = 0
        self._ball_column = int(self._rng.integers(self._columns))
        self._paddle_column = self._columns // 2
        self._started = True
        return dm_env.restart(self._observation())

    def step(self, action) -> dm_env.TimeStep:
        if not self._started:
            return self.reset()
        action = int(action)
        if not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"Catch action must be in [0, {NUM_ACTIONS}), got {action}.")
        self._paddle_column = int(np.clip(self._paddle_column + action - 1, 0, self._columns - 1))
        self._ball_row += 1
        if self._ball_row == self._rows - 1:
            self._started = False
            reward = 1.0 if self._paddle_column == self._ball_column else -1.0
            return dm_env.termination(reward, self._observation())
        return dm_env.transition(0.0, self._observation())

    def _observation(self):
        frame = np.zeros([self._rows, self._columns, 1], np.uint8)
        frame[self._ball_row, self._ball_column, 0] = 255
        frame[self._rows - 1, self._paddle_column, 0] = 255
        return {"frame": frame}

    def observation_spec(self):
        return {
            "frame": specs.BoundedArray(
                [self._rows, self._columns, 1], np.uint8, 0, 255, name="frame"
            )
        }

    def action_spec(self):
        return specs.DiscreteArray(NUM_ACTIONS, name="action")


@gin.configurable
def make_catch(num_envs: int, seed: int = 0, rows: int = 10, columns: int = 5):
    """K independent Catch games with seeds seed, seed+1, ..."""
    envs = [Catch(rows, columns, seed + i) for i in range(num_envs)]
    return SequentialBatchedEnv(envs, frames_per_step=1, levels=["catch"] * num_envs)
