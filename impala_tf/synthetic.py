"""Random learner batches that match the unroll spec, for smoke runs and timing scripts."""

from typing import Mapping

import numpy as np
import tensorflow as tf

from impala_tf.networks.agent import Agent
from impala_tf.specs import LearnerBatch, Trajectory, batched, trajectory_spec


def synthetic_batch(
    agent: Agent,
    observation_spec: Mapping[str, tf.TensorSpec],
    unroll_length: int,
    batch_size: int,
    episode_start_prob: float = 0.01,
    seed: int = 0,
) -> LearnerBatch:
    """A `LearnerBatch` of `[T+1, B, ...]` random tensors with the spec's shapes and dtypes."""
    rng = np.random.default_rng(seed)
    spec = batched(trajectory_spec(observation_spec, agent.num_actions, unroll_length), batch_size)

    def observation(s: tf.TensorSpec) -> tf.Tensor:
        high = 256 if s.dtype == tf.uint8 else 1000
        return tf.constant(rng.integers(0, high, size=s.shape.as_list()), s.dtype)

    shape = spec.action.shape.as_list()
    episode_start = rng.random(shape) < episode_start_prob
    # dm_env: the step before an episode start is its LAST; here always a termination.
    discount = np.ones(shape, np.float32)
    discount[:-1][episode_start[1:]] = 0.0
    trajectory = Trajectory(
        observation={name: observation(s) for name, s in spec.observation.items()},
        action=tf.constant(rng.integers(0, agent.num_actions, size=shape), tf.int32),
        reward=tf.constant(rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=shape), tf.float32),
        discount=tf.constant(discount),
        episode_start=tf.constant(episode_start),
        behaviour_logits=tf.constant(
            rng.normal(size=spec.behaviour_logits.shape.as_list()), tf.float32
        ),
    )
    return LearnerBatch(trajectory, agent.initial_state(batch_size))
