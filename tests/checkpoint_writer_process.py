"""The writer of the kill-during-save test (run by tests/test_checkpoints.py): restores the
latest checkpoint of LOGDIR and checks that every value in it belongs to the same save, then
saves for ever, each save's values all equal to its step, printing "saved N" after each."""

import sys

import numpy as np
import tensorflow as tf

from impala_tf.learning.checkpoints import Checkpointer


class Model(tf.Module):
    """40 MB of weights in two variables, so that a save takes a while."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.zeros([5_000_000]))
        self.b = tf.Variable(tf.zeros([5_000_000]))


def main(logdir: str) -> None:
    model = Model()
    checkpointer = Checkpointer(logdir, model, max_to_keep=2)
    path = checkpointer.restore_latest()
    step = int(checkpointer.learner_step.numpy())
    if path is not None:
        for variable in (model.w, model.b):
            values = np.unique(variable.numpy())
            assert values.tolist() == [step], f"{path} mixes saves: {values[:5]} vs step {step}"
        assert int(checkpointer.env_frames.numpy()) == 10 * step
    print(f"restored {step} from {path}", flush=True)
    while True:
        step += 1
        checkpointer.learner_step.assign(step)
        checkpointer.env_frames.assign(10 * step)
        model.w.assign(tf.fill(model.w.shape, float(step)))
        model.b.assign(tf.fill(model.b.shape, float(step)))
        checkpointer.save()
        print(f"saved {step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
