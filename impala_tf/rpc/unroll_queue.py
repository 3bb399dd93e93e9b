"""The bounded queue between the learner's service and its batcher, and the streams that wait
for room in it: back-pressure without holding a thread, first come first served."""

import asyncio
import collections
import queue
from typing import Callable, List


class UnrollQueue(queue.Queue):
    """The bounded queue between the service and the batcher, which tells listeners (the
    server's event loop) each time a consumer takes an item, i.e. when there is room."""

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        self._listeners: List[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _get(self):
        item = super()._get()
        for listener in self._listeners:
            listener()
        return item


class RoomWaiters:
    """Streams waiting, first come first served, for room in a queue that another thread
    drains: each item taken wakes the longest waiting stream, and no stream overtakes one
    that waits (no thread is held while it waits, and no stream is passed over)."""

    # A waiting stream looks again at least this often (a queue without notifications, or
    # the learner stopping).
    RECHECK_SECONDS = 0.5

    def __init__(self, loop: asyncio.AbstractEventLoop, unrolls: "queue.Queue"):
        self._loop = loop
        self._waiters: "collections.deque[asyncio.Future]" = collections.deque()
        self._live = 0  # streams inside `wait` (woken ones too, until they resume)
        self._unrolls = unrolls
        self._notified = isinstance(unrolls, UnrollQueue)
        if self._notified:
            unrolls.add_listener(self._taken)

    def _taken(self) -> None:
        """The consumer took an item (its thread, under the queue's lock): wake the next
        waiting stream. With none waiting the loop is not disturbed; a stream that starts
        waiting later finds the room itself (`wait`)."""
        if self._live:
            self._loop.call_soon_threadsafe(self.wake_one)

    @property
    def waiting(self) -> bool:
        return self._live > 0

    def wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait(self, front: bool = False) -> None:
        """Until woken or the recheck period passed; `front`: ahead of every other waiter
        (a stream that was woken but found no room keeps its place)."""
        self._live += 1
        waiter = None
        try:
            if self._notified and not self._waiters and not self._unrolls.full():
                return  # room made while no stream waited (so none was told): take it
            waiter = self._loop.create_future()
            if front:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            timeout = self.RECHECK_SECONDS if self._notified else 0.02
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._live -= 1
            if waiter is not None and waiter.cancelled():  # timed out, or the stream ended
                try:
                    self._waiters.remove(waiter)  # the line holds only waiting streams
                except ValueError:
                    pass
