"""Checkpoints: the agent, the optimiser, the learner step and the environment frames, in
LOGDIR/checkpoints, written by `tf.train.CheckpointManager` (the index file is updated only
after a checkpoint's files are complete, so an interrupted save leaves the previous one
usable)."""

import os
from typing import Optional

import tensorflow as tf

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_SUBDIR)


def latest_checkpoint(logdir: str) -> Optional[str]:
    """The newest checkpoint prefix under LOGDIR/checkpoints, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(logdir))


class Checkpointer:
    """Saves and restores the learner's state.

    Attributes:
      learner_step, env_frames: int64 variables saved with the model.
    """

    def __init__(self, logdir: str, agent, optimizer=None, max_to_keep: int = 3):
        self.learner_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="learner_step")
        self.env_frames = tf.Variable(0, dtype=tf.int64, trainable=False, name="env_frames")
        objects = dict(agent=agent, learner_step=self.learner_step, env_frames=self.env_frames)
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, checkpoint_dir(logdir), max_to_keep=max_to_keep
        )

    def save(self) -> str:
        return self._manager.save(checkpoint_number=int(self.learner_step.numpy()))

    def restore_latest(self) -> Optional[str]:
        """Restores the newest checkpoint if there is one; returns its path."""
        path = self._manager.latest_checkpoint
        if path:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        return path


def restore_agent(agent, path: str) -> None:
    """Loads only the agent's weights from a learner checkpoint (for evaluation)."""
    tf.train.Checkpoint(agent=agent).restore(path).expect_partial().assert_existing_objects_matched()
