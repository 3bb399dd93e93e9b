"""Who may hold the learner's calls, and how much they may hold: the limits that keep idle,
slow or greedy callers from starving honest actors.

- **Call slots per actor id** (`CallBudget`). An actor names itself in the call's metadata
  (`impala-actor-id: N`, the project's clients always do); each id may hold at most
  `PER_ACTOR_CALLS` calls of each method at once (one stream and one parameter pull, plus
  one for a reconnect that overlaps the old call's end). Calls that name no id share a small
  anonymous pool. So callers that hold slots only use up their own id's (or the pool's),
  never an honest actor's. An id outside the run's actors is refused at once.
- **An idle deadline on every read** (`idle_deadline_seconds`): a call that sends nothing for
  a few unroll periods (derived from the unroll length, at least `MIN_IDLE_SECONDS`) is
  closed with DEADLINE_EXCEEDED and counted; the project's actors then reconnect.
- **Bytes in hand** (`ByteBudget`): the bytes of messages read but not yet handed on (an
  unroll waiting for room in the queue, a step waiting for inference) are budgeted (the
  service derives it from the queue's capacity and the run's actors); past the budget a
  call waits before reading its next message, and gRPC's flow control holds its sender.

The token check (`security.TokenInterceptor`) runs before any of this: a call without the
run's token is refused before it holds a slot.
"""

import asyncio
import collections
import threading
from typing import Dict, Optional, Sequence, Tuple

from impala_tf.rpc.protocol import ACTOR_ID_METADATA

__all__ = ["ACTOR_ID_METADATA", "AdmissionError", "ByteBudget", "CallBudget",
           "claimed_actor_id", "idle_deadline_seconds"]

PER_ACTOR_CALLS = 2  # per method: the call, and a reconnect overlapping its end
ANONYMOUS_CALLS = 16  # calls that name no actor id, all methods together
MIN_IDLE_SECONDS = 30.0
IDLE_UNROLL_PERIODS = 4
# The slowest agent step an honest actor takes (environment and inference; DMLab with the
# deep network on a loaded CPU), for the idle deadline.
SLOW_AGENT_STEP_SECONDS = 0.25


def idle_deadline_seconds(unroll_length: int, configured: Optional[float] = None) -> float:
    """How long a call may send nothing: `configured`, else `IDLE_UNROLL_PERIODS` unroll
    periods of T slow agent steps, at least `MIN_IDLE_SECONDS` (Atari's T=20: 30 s; DMLab's
    T=100: 100 s)."""
    if configured is not None:
        if configured <= 0:
            raise ValueError(f"The idle deadline must be positive, got {configured}.")
        return float(configured)
    return max(MIN_IDLE_SECONDS,
               IDLE_UNROLL_PERIODS * int(unroll_length) * SLOW_AGENT_STEP_SECONDS)


class AdmissionError(Exception):
    """A call that may not be served: `code` names its `grpc.StatusCode`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def claimed_actor_id(metadata: Optional[Sequence[Tuple[str, object]]],
                     num_actors: int) -> Optional[int]:
    """The actor id a call's metadata names (None: none), or `AdmissionError` when it is not
    one of the run's ids or is given twice."""
    found = [value for key, value in metadata or () if key == ACTOR_ID_METADATA]
    if not found:
        return None
    if len(found) > 1:
        raise AdmissionError("INVALID_ARGUMENT", f"{ACTOR_ID_METADATA} given {len(found)} "
                             "times")
    value = found[0].decode("ascii", "replace") if isinstance(found[0], bytes) else found[0]
    if not (isinstance(value, str) and value.isdigit() and len(value) <= 9
            and int(value) < num_actors):
        raise AdmissionError("INVALID_ARGUMENT", f"{ACTOR_ID_METADATA} {value[:20]!r} is not "
                             f"one of this run's {num_actors} actor ids")
    return int(value)


class CallBudget:
    """Call slots per (method, actor id), and a pool for calls that name no id.

    Thread-safe; `admit` and `release` are called by the server's handlers."""

    def __init__(self, per_actor: int = PER_ACTOR_CALLS, anonymous: int = ANONYMOUS_CALLS):
        self.per_actor, self.anonymous = int(per_actor), int(anonymous)
        self._lock = threading.Lock()
        self._held: Dict[Tuple[str, int], int] = collections.Counter()
        self._anonymous_held = 0
        self.refused = 0

    def admit(self, method: str, actor_id: Optional[int]) -> None:
        """Takes a slot, or raises `AdmissionError` (RESOURCE_EXHAUSTED) saying whose slots
        are all held."""
        with self._lock:
            if actor_id is None:
                if self._anonymous_held < self.anonymous:
                    self._anonymous_held += 1
                    return
                who = (f"the {self.anonymous} calls that name no actor id (set "
                       f"{ACTOR_ID_METADATA})")
            else:
                if self._held[(method, actor_id)] < self.per_actor:
                    self._held[(method, actor_id)] += 1
                    return
                who = f"actor {actor_id}'s {self.per_actor} {method} calls"
            self.refused += 1
        raise AdmissionError("RESOURCE_EXHAUSTED", f"{who} are all in use; retry later")

    def release(self, method: str, actor_id: Optional[int]) -> None:
        with self._lock:
            if actor_id is None:
                self._anonymous_held -= 1
                return
            key = (method, actor_id)
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]

    def most_held(self, num_actors: int, methods: int) -> int:
        """The most calls it lets hold slots at once: every id's slots of every method, and
        the anonymous pool."""
        return methods * self.per_actor * int(num_actors) + self.anonymous

    def held(self) -> int:
        """Calls holding a slot now."""
        with self._lock:
            return self._anonymous_held + sum(self._held.values())


class ByteBudget:
    """Bytes of messages that calls hold (read, not yet handed on), on one event loop.

    Before a read a call `reserve`s `unit` bytes (a typical message), waiting first come
    first served while the bytes held are at or above `capacity`; after the read it
    `settle`s the reservation to the message's real size, and `release`s that once the
    message is handed on (or the reservation, if the read ended without one). At most
    `capacity` plus one message per reading call are held, whatever the callers send."""

    def __init__(self, capacity: int, unit: int):
        if capacity <= 0 or unit <= 0:
            raise ValueError(f"A byte budget needs a positive capacity and unit, got "
                             f"{capacity} and {unit}.")
        self.capacity, self.unit = int(capacity), int(unit)
        self.held = 0
        self._waiters: "collections.deque[asyncio.Future]" = collections.deque()

    async def reserve(self) -> None:
        if self.held >= self.capacity or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:  # cancelled (the call ended): the next may take its turn
                self._waiters.remove(waiter)
                self._wake()
                raise
            self._waiters.remove(waiter)
        self._add(self.unit)
        self._wake()  # the room left may admit the next in line too

    def settle(self, nbytes: int) -> None:
        """A reservation became a message of `nbytes`."""
        self._add(int(nbytes) - self.unit)

    def release(self, nbytes: int) -> None:
        self.held -= int(nbytes)
        self._wake()

    def _add(self, nbytes: int) -> None:
        self.held += nbytes

    def _wake(self) -> None:
        if self.held < self.capacity and self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)
