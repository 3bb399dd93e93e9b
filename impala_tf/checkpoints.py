"""Checkpoints: the agent, the optimiser, PopArt's statistics (when on), the learner step and
the environment frames, in
LOGDIR/checkpoints, written by `tf.train.CheckpointManager`: a save writes its files into
`ckpt-N_temp/`, moves them into place, and only then rewrites the `checkpoint` index (an
atomic rename), so a save interrupted at any point (kill -9, power loss) leaves the previous
checkpoint usable. A `Checkpointer` removes such interrupted saves' leftovers when it starts.
"""

import glob
import logging
import os
import shutil
from typing import Optional

import tensorflow as tf

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_SUBDIR)


def latest_checkpoint(logdir: str) -> Optional[str]:
    """The newest checkpoint prefix under LOGDIR/checkpoints, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(logdir))


def remove_interrupted_saves(directory: str) -> int:
    """Deletes the `ckpt-N_temp` folders that saves killed midway left; returns how many."""
    leftovers = glob.glob(os.path.join(directory, "*_temp"))
    for path in leftovers:
        logging.warning("removing %s, left by an interrupted checkpoint save", path)
        shutil.rmtree(path, ignore_errors=True)
    return len(leftovers)


class Checkpointer:
    """Saves and restores the learner's state.

    Attributes:
      learner_step, env_frames: int64 variables saved with the model.
    """

    def __init__(self, logdir: str, agent, optimizer=None, max_to_keep: int = 3, popart=None):
        self.learner_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="learner_step")
        self.env_frames = tf.Variable(0, dtype=tf.int64, trainable=False, name="env_frames")
        remove_interrupted_saves(checkpoint_dir(logdir))
        objects = dict(agent=agent, learner_step=self.learner_step, env_frames=self.env_frames)
        if optimizer is not None:
            objects["optimizer"] = optimizer
        if popart is not None:  # the head's units: saved and restored with its weights
            objects["popart"] = popart
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, checkpoint_dir(logdir), max_to_keep=max_to_keep
        )

    def save(self) -> str:
        return self._manager.save(checkpoint_number=int(self.learner_step.numpy()))

    def restore_latest(self, from_dir: Optional[str] = None) -> Optional[str]:
        """Restores the newest checkpoint if there is one (in this checkpointer's directory,
        or in `from_dir`: a learner worker resumes from the chief's); returns its path."""
        path = tf.train.latest_checkpoint(from_dir) if from_dir else self._manager.latest_checkpoint
        if path:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        return path


def restore_agent(agent, path: str) -> None:
    """Loads only the agent's weights from a learner checkpoint (for evaluation)."""
    tf.train.Checkpoint(agent=agent).restore(path).expect_partial().assert_existing_objects_matched()
