"""Checkpoints: the agent, the optimiser, PopArt's statistics (when on), the learner step,
the environment frames and the learner's random generators (the minibatch order's and, in
central mode, the action sampling's), in
LOGDIR/checkpoints, written by `tf.train.CheckpointManager`: a save writes its files into
`ckpt-N_temp/`, moves them into place, and only then rewrites the `checkpoint` index (an
atomic rename), so a save interrupted at any point (kill -9, power loss) leaves the previous
checkpoint usable. A `Checkpointer` removes such interrupted saves' leftovers when it starts.
"""

import glob
import json
import logging
import os
import shutil
from typing import Optional

import numpy as np

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

    def __init__(self, logdir: str, agent, optimizer=None, max_to_keep: int = 3, popart=None,
                 minibatch_rng: Optional[np.random.Generator] = None,
                 policy_rng: Optional[tf.random.Generator] = None):
        self.learner_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="learner_step")
        self.env_frames = tf.Variable(0, dtype=tf.int64, trainable=False, name="env_frames")
        remove_interrupted_saves(checkpoint_dir(logdir))
        objects = dict(agent=agent, learner_step=self.learner_step, env_frames=self.env_frames)
        if optimizer is not None:
            objects["optimizer"] = optimizer
        if popart is not None:  # the head's units: saved and restored with its weights
            objects["popart"] = popart
        self._core = dict(objects)
        # The generators: numpy's state as JSON in a string variable, TensorFlow's as itself.
        self._minibatch_rng = minibatch_rng
        rng = {}
        if minibatch_rng is not None:
            self._minibatch_state = tf.Variable("", dtype=tf.string, trainable=False,
                                                name="minibatch_rng")
            rng["minibatch"] = self._minibatch_state
        if policy_rng is not None:
            rng["policy"] = policy_rng
        self._has_rng = bool(rng)
        if rng:
            objects["rng"] = tf.train.Checkpoint(**rng)
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, checkpoint_dir(logdir), max_to_keep=max_to_keep
        )

    def save(self) -> str:
        if self._minibatch_rng is not None:
            self._minibatch_state.assign(json.dumps(self._minibatch_rng.bit_generator.state))
        return self._manager.save(checkpoint_number=int(self.learner_step.numpy()))

    def restore_latest(self, from_dir: Optional[str] = None) -> Optional[str]:
        """Restores the newest checkpoint if there is one (in this checkpointer's directory,
        or in `from_dir`: a learner worker resumes from the chief's); returns its path."""
        path = tf.train.latest_checkpoint(from_dir) if from_dir else self._manager.latest_checkpoint
        if not path:
            return path
        saved = {name for name, _ in tf.train.list_variables(path)}
        if self._has_rng and not any(
                name.startswith("rng/") for name in saved):
            # Written before generators were checkpointed: the rest restores exactly, the
            # generators keep their fresh state.
            logging.warning("%s holds no random generator state; they start afresh", path)
            tf.train.Checkpoint(**self._core).restore(path).assert_existing_objects_matched()
            return path
        self._checkpoint.restore(path).assert_existing_objects_matched()
        if self._minibatch_rng is not None and self._minibatch_state.numpy():
            self._minibatch_rng.bit_generator.state = json.loads(
                self._minibatch_state.numpy().decode())
        return path


def restore_agent(agent, path: str) -> None:
    """Loads only the agent's weights from a learner checkpoint (for evaluation)."""
    tf.train.Checkpoint(agent=agent).restore(path).expect_partial().assert_existing_objects_matched()
