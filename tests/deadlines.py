"""Deadlines for tests that wait on other threads or processes: such a test fails within its
stated time with a message naming what it waited for, never hangs until pytest's timeout."""

import contextlib
import threading
import time
from typing import Callable


@contextlib.contextmanager
def stopping_at(seconds: float, stop: Callable[[], None], what: str):
    """Runs the block; if it is still running after `seconds`, calls `stop()` (which must
    make the block return or raise) and fails with "waited N s for `what`". Yields the event
    that says the time is up (for blocks that loop)."""
    expired = threading.Event()

    def expire():
        expired.set()
        stop()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    except BaseException as error:
        if expired.is_set():
            raise AssertionError(f"waited {seconds:g} s for {what}") from error
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise AssertionError(f"waited {seconds:g} s for {what}")


def run_learner(learner, max_steps: int, seconds: float = 120, what: str = "") -> dict:
    """`learner.run(max_steps=...)` that fails after `seconds` (stopping the learner) with a
    message naming `what` it waited for."""
    what = what or "the actors' batches"
    with stopping_at(seconds, learner.stop, f"{max_steps} learner steps on {what}"):
        return learner.run(max_steps=max_steps)


def run_learner_until(learner, condition: Callable[[], bool], seconds: float,
                      what: str) -> dict:
    """Runs `learner` one batch at a time until `condition()` holds; fails after `seconds`
    (stopping the learner) naming `what` it waited for. Returns the last metrics record."""
    record: dict = {}
    with stopping_at(seconds, learner.stop, what) as expired:
        while not condition() and not expired.is_set():
            record = learner.run(max_steps=1)
    return record


def wait_for(condition: Callable[[], bool], seconds: float, what: str,
             interval: float = 0.02) -> None:
    """Polls `condition` until it holds; fails after `seconds` naming `what`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        time.sleep(interval)
