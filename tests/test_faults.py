"""faults: what each way of stopping a learner decides and says, on its own: the non-finite
guard's refusals and its limit, a lost worker's and a full disk's one-line errors."""

import errno

import pytest
import tensorflow as tf

from impala_tf.distribute import WorkerIdentity
from impala_tf.learning.faults import (DiskFullError, NonFiniteGuard, NonFiniteUpdatesError,
                                       disk_full, is_disk_full, worker_lost)

STATS = {"total_loss": float("nan"), "grad_norm": float("inf")}


def test_a_traced_update_refuses_its_actors_and_never_counts_towards_the_limit():
    guard, refused, saved = NonFiniteGuard(2), [], []
    for _ in range(5):
        guard.skipped(STATS, [3, 5], lambda ids: refused.append(ids) or True,
                      lambda: saved.append(1), learner_step=7)
    assert refused == [[3, 5]] * 5 and saved == [] and guard.consecutive == 0
    assert guard.total == 5


def test_untraced_updates_in_a_row_stop_at_the_limit_after_saving_and_a_finite_one_resets():
    guard, saved = NonFiniteGuard(3), []

    def skip():
        guard.skipped(STATS, [], lambda ids: False, lambda: saved.append("ckpt"), 42)

    skip()
    skip()
    guard.finite()  # the run of untraced ones ends
    skip()
    skip()
    assert saved == [] and guard.consecutive == 2
    with pytest.raises(NonFiniteUpdatesError, match=r"3 updates in a row .* learner step 42"):
        skip()
    assert saved == ["ckpt"] and guard.total == 5
    assert NonFiniteGuard(0).max_consecutive == 1  # at least one


def test_a_lost_worker_is_one_line_saying_what_the_chief_saved():
    worker = WorkerIdentity(1, 3, False)
    error = tf.errors.UnavailableError(None, None, "socket closed\nby peer")
    lost = worker_lost(error, worker, 12, save=lambda: "/run/checkpoints/ckpt-12")
    assert "\n" not in str(lost)
    assert "worker 1 of 3" in str(lost) and "socket closed by peer" in str(lost)
    assert "the chief saved step 12 to /run/checkpoints/ckpt-12" in str(lost)

    def failing():
        raise OSError("disk gone")

    assert "could not save" in str(worker_lost(error, worker, 12, save=failing))
    assert "saved" not in str(worker_lost(error, worker, 12, save=None))


def test_a_full_disk_names_where_and_the_last_whole_checkpoint_when_saving_fails():
    error = OSError(errno.ENOSPC, "No space left on device", "/run/metrics.jsonl")
    assert is_disk_full(error) and not is_disk_full(OSError(errno.EACCES, "denied"))
    assert is_disk_full(tf.errors.ResourceExhaustedError(None, None, "No space left on device"))
    saved = disk_full(error, 1234567, 9, save=lambda: "/run/checkpoints/ckpt-9",
                      latest=lambda: None)
    assert isinstance(saved, DiskFullError) and "\n" not in str(saved)
    assert "(/run/metrics.jsonl)" in str(saved) and "1,234,567 frames" in str(saved)
    assert "a final checkpoint went to /run/checkpoints/ckpt-9" in str(saved)

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    assert "the last whole checkpoint is /run/checkpoints/ckpt-8" in str(
        disk_full(error, 1, 9, save=full, latest=lambda: "/run/checkpoints/ckpt-8"))
    assert "no checkpoint was written" in str(disk_full(error, 1, 9, save=full,
                                                        latest=lambda: None))
