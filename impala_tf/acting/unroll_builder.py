"""K environments' steps cut into K unrolls of T+1 steps: the actor's (`actor.Actor`) and
central inference's (`central_inference`) one way of building them."""

from typing import Any, Dict, List

import numpy as np
import tensorflow as tf

from impala_tf.envs.base import BatchedTimeStep
from impala_tf.specs import Trajectory, unroll_fields


class UnrollBuilder:
    """Collects T+1 steps for K environments and cuts them into K unrolls."""

    def __init__(self, num_envs: int, unroll_length: int, num_actions: int):
        self.num_envs, self.unroll_length, self.num_actions = num_envs, unroll_length, num_actions
        self._steps: List[Dict[str, Any]] = []

    def start(self, timestep: BatchedTimeStep, prev_actions: np.ndarray,
              prev_logits: np.ndarray) -> None:
        """The first step of an unroll: the current observation and what led to it."""
        self._steps = []
        self.append(timestep, prev_actions, prev_logits)

    def append(self, timestep: BatchedTimeStep, actions: np.ndarray, logits: np.ndarray) -> None:
        self._steps.append(dict(
            observation=timestep.observation, action=actions.astype(np.int32),
            reward=timestep.reward.astype(np.float32),
            discount=timestep.discount.astype(np.float32),
            episode_start=timestep.first(), behaviour_logits=logits.astype(np.float32)))

    @property
    def full(self) -> bool:
        return len(self._steps) == self.unroll_length + 1

    def unrolls(self, core_state: Any) -> List[Dict[str, np.ndarray]]:
        """K flat `name -> array` unrolls (`[T+1, ...]` each, core state `[...]`)."""
        def stack(key):
            return np.stack([s[key] for s in self._steps])  # [T+1, K, ...]

        observation = {name: np.stack([s["observation"][name] for s in self._steps])
                       for name in self._steps[0]["observation"]}
        trajectory = Trajectory(observation, stack("action"), stack("reward"), stack("discount"),
                                stack("episode_start"), stack("behaviour_logits"))
        core = tf.nest.map_structure(np.asarray, core_state)
        return [
            unroll_fields(tf.nest.map_structure(lambda x: x[:, k], trajectory),
                          tf.nest.map_structure(lambda x: x[k], core))
            for k in range(self.num_envs)
        ]
