"""What stops a learner, and how it is told apart: non-finite updates no actor explains, a
full disk, a lost learner worker."""

import errno

import tensorflow as tf


class NonFiniteUpdatesError(RuntimeError):
    """Too many updates in a row had NaN/Inf gradients that no actor's unrolls explain."""


class DiskFullError(RuntimeError):
    """The disk under the logdir is full: the run stopped (see the message)."""


class WorkerLostError(RuntimeError):
    """A learner worker of a multi-worker run lost another (see the message)."""


# What a collective op raises on a worker when another worker of the cluster has gone.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError,
                       tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (Python's or TensorFlow's) says the device has no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, tf.errors.OpError) and "No space left on device" in str(error)
