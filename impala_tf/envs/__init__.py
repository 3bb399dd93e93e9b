"""Batched environments for actors: K environments stepped together, dm_env semantics each."""

from impala_tf.envs.base import BatchedEnv, BatchedTimeStep, EpisodeStats, SequentialBatchedEnv

__all__ = ["BatchedEnv", "BatchedTimeStep", "EpisodeStats", "SequentialBatchedEnv"]
