"""A put into a bounded queue waits while it is full, and gives up, without putting, once
told to stop."""

import queue
import threading
import time

from impala_tf.queues import put_unless_stopped


def test_a_put_waits_for_room_then_lands():
    into = queue.Queue(maxsize=1)
    into.put("first")
    threading.Timer(0.3, into.get).start()  # room after 0.3 s
    started = time.monotonic()
    assert put_unless_stopped(into, "second", lambda: False)
    assert time.monotonic() - started >= 0.25 and into.get_nowait() == "second"


def test_a_stop_ends_the_wait_and_nothing_is_put():
    into = queue.Queue(maxsize=1)
    into.put("first")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert not put_unless_stopped(into, "second", stop.is_set)
    assert into.get_nowait() == "first" and into.empty()
    assert not put_unless_stopped(queue.Queue(), "x", lambda: True)  # stopped before: not put
