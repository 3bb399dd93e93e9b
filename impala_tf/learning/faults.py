"""What stops a learner, and how it is told apart and reported: non-finite updates no actor
explains (`NonFiniteGuard`), a full disk (`disk_full`), a lost learner worker
(`worker_lost`)."""

import errno
import logging
from typing import Callable, List, Optional

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


class NonFiniteGuard:
    """Decides what a skipped (non-finite) update means. Traced to actors (their unrolls
    alone give non-finite gradients), they are refused and training goes on; untraced, it
    counts one in a row, and `max_consecutive` in a row (the model itself diverged) end the
    run with `NonFiniteUpdatesError`."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max(1, int(max_consecutive))
        self.total = 0  # skipped updates in all
        self.consecutive = 0  # untraced ones in a row

    def finite(self) -> None:
        """An update went through: the run of untraced ones ends."""
        self.consecutive = 0

    def skipped(self, stats, culprits: List[int], refuse: Callable[[List[int]], bool],
                save: Callable[[], object], learner_step: int) -> None:
        """Counts and logs a skipped update; refuses `culprits`, or raises
        `NonFiniteUpdatesError` (after `save`, the last finite weights) at the limit."""
        self.total += 1
        loss = float(stats["total_loss"])
        if culprits:
            newly = refuse(culprits)
            logging.warning(
                "Skipped a non-finite update (loss %s): traced to unrolls of actor(s) %s, "
                "whose unrolls are refused from now on%s.", loss, culprits,
                "" if newly else " (already refused; their queued unrolls drain)")
            return
        self.consecutive += 1
        logging.warning(
            "Skipped a non-finite update (loss %s, gradient norm %s): %d in a row, %d in all.",
            loss, float(stats["grad_norm"]), self.consecutive, self.total)
        if self.consecutive >= self.max_consecutive:
            save()
            raise NonFiniteUpdatesError(
                f"{self.consecutive} updates in a row had non-finite gradients (last loss "
                f"{loss}) that no actor's unrolls explain; training stopped with the weights "
                f"of learner step {learner_step}, which are finite. Look at the rewards "
                "(clipping), the learning rate and the last metrics.jsonl lines.")


def _one_line(error: BaseException, limit: int = 160) -> str:
    return " ".join((getattr(error, "message", None) or str(error)).split())[:limit]


def worker_lost(error: BaseException, worker, learner_step: int,
                save: Optional[Callable[[], str]]) -> WorkerLostError:
    """Another worker went away mid-step (its all-reduce failed): the weights are still those
    of the last whole step. `save` (the chief's, else None) saves them; the returned error says
    so in one line, and that the same command on every worker resumes."""
    saved = ""
    if save is not None:
        try:
            saved = f"; the chief saved step {learner_step} to {save()}"
        except (OSError, tf.errors.OpError):
            saved = "; the chief could not save a final checkpoint"
    return WorkerLostError(
        f"Learner worker {worker.index} of {worker.count} lost the cluster at learner step "
        f"{learner_step} ({type(error).__name__}: {_one_line(error)}){saved}. A multi-worker "
        "run stops whole: start every worker again with the same command and TF_CONFIG, and "
        "all resume from the chief's last checkpoint.")


def disk_full(error: BaseException, env_frames: int, learner_step: int,
              save: Callable[[], str], latest: Callable[[], Optional[str]]) -> DiskFullError:
    """Tries a final checkpoint (`save`) and returns the `DiskFullError` that says, in one
    line, where the disk filled, what was saved (or `latest` whole checkpoint) and how to go
    on."""
    where = getattr(error, "filename", None) or str(error).split(";")[0].split("}")[-1]
    try:
        saved = f"a final checkpoint went to {save()}"
    except (OSError, tf.errors.OpError):
        last = latest()
        saved = f"the last whole checkpoint is {last}" if last else "no checkpoint was written"
    return DiskFullError(
        f"No space left on the device ({str(where).strip()}): training stopped at "
        f"{env_frames:,d} frames, learner step {learner_step}; {saved}. Free some space and "
        "run the same command again to resume.")
