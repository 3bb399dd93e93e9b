"""Handing work on through a bounded queue without outliving a stop: the threads that do it
(an actor's outbox, the learner's batcher, central inference) wait while the queue is full
and give up once told to stop."""

import queue
from typing import Any, Callable

POLL_SECONDS = 0.1  # how often a waiting put looks at its stop condition


def put_unless_stopped(into: "queue.Queue", item: Any, stopped: Callable[[], bool]) -> bool:
    """Puts `item` into `into`, waiting while it is full; returns False, without putting it,
    once `stopped()` is true (checked every `POLL_SECONDS`)."""
    while not stopped():
        try:
            into.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
