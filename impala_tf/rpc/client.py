"""The actor's side of the transport: a background stream of unrolls and parameter pulls.

`send_unroll` hands an encoded unroll to a bounded outbox that a background thread streams
to the learner; when the outbox is full it blocks (the learner's back-pressure reaches the
actor). A `frame_packing.StreamedUnroll` goes whole as its environment's first unroll on a
stream and continued (without the frames the stream already carried) after it. If the
stream breaks (the learner rejected a message or went away) the thread opens a new one
after a backoff; the message in flight is lost, the rest are not. (gRPC may keep
pulling from a dead call's request iterator, so each call gets its own iterator that stops
and hands back what it took once its call is over.)

`get_parameters` can be interrupted by a `threading.Event` (a SIGTERM must not wait out an
RPC deadline), and the channel redials a learner that went away within
`max_reconnect_backoff_ms`, so a restarted learner is found again quickly.
"""

import logging
import queue
import threading
import time
from typing import Dict, NamedTuple, Optional, Union

import grpc
import numpy as np

from impala_tf.queues import put_unless_stopped
from impala_tf.rpc import codec
from impala_tf.rpc.frame_packing import StreamedUnroll
from impala_tf.rpc.security import Security
from impala_tf.rpc.protocol import (ACTOR_ID_METADATA, GET_PARAMETERS, PARAMETERS_REQUEST,
                                    STREAM_UNROLLS, grpc_options)

_CLOSE = object()

# Errors that mean "the learner is not there (yet, or any more), or busy": worth retrying.
RETRYABLE_CODES = frozenset([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED])


def call_metadata(security: Security, actor_id: Optional[int]):
    """A call's metadata: the token (when there is one) and the actor id the learner budgets
    its call slots by (`admission`), when known."""
    metadata = list(security.call_metadata() or ())
    if actor_id is not None:
        metadata.append((ACTOR_ID_METADATA, str(int(actor_id))))
    return tuple(metadata) or None


class Parameters(NamedTuple):
    """A parameters message: the learner step that made them, the learner process's
    incarnation (see `parameter_store.ParameterStore`) and `name -> array` fields."""

    version: int
    incarnation: int
    fields: Dict[str, np.ndarray]


class Backoff:
    """Retry delays that double from `initial` up to `maximum`; `reset` after a success."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = float(initial), float(maximum)
        self._delay = self.initial

    def next(self) -> float:
        delay, self._delay = self._delay, min(2 * self._delay, self.maximum)
        return delay

    def reset(self) -> None:
        self._delay = self.initial


class LearnerUnreachableError(RuntimeError):
    """The learner did not answer for longer than a caller's reconnect timeout."""


class Reconnect:
    """How every caller of the learner retries while it is unreachable (an actor's parameter
    pulls, an environment actor's stream, the unroll stream): each failure is logged and
    waited out with delays doubling from `initial` to `maximum`; with `timeout`, a failure
    that comes more than that many seconds after the first unanswered one raises
    `LearnerUnreachableError` instead."""

    def __init__(self, initial: float, maximum: float, timeout: Optional[float] = None):
        self._backoff = Backoff(initial, maximum)
        self.timeout = timeout
        self.down_since: Optional[float] = None

    def failed(self, what: str, stop_event: threading.Event) -> None:
        """After a failed call (`what` says which and why): waits its delay (or until
        `stop_event`), or raises `LearnerUnreachableError` past the timeout."""
        now = time.monotonic()
        self.down_since = self.down_since or now
        if self.timeout is not None and now - self.down_since > self.timeout:
            raise LearnerUnreachableError(
                f"{what}: no answer for {now - self.down_since:.0f} s") from None
        delay = self._backoff.next()
        logging.warning("%s; retrying in %.1f s", what, delay)
        stop_event.wait(delay)

    def answered(self) -> Optional[float]:
        """After a call that went through: the seconds the learner had been unreachable
        (None if it had not), and the next failure waits the first delay again."""
        down = None if self.down_since is None else time.monotonic() - self.down_since
        self.down_since = None
        self._backoff.reset()
        return down


def channel_options(max_message_bytes: int, max_reconnect_seconds: float) -> list:
    """`grpc_options` plus a cap on the channel's own redial backoff (gRPC's default grows
    to two minutes, which a restarted learner would wait out)."""
    backoff_ms = int(1000 * max_reconnect_seconds)
    return grpc_options(max_message_bytes) + [
        ("grpc.initial_reconnect_backoff_ms", min(500, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(500, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


class _Call:
    """Whether a stream call is over; its request iterator stops when it is."""

    def __init__(self):
        self.over = False


class LearnerClient:
    """Connects an actor to the learner at `address` (`host:port`), over TLS and with the
    shared token when `security` (default: the gin-configured `Security()`) says so; every
    call names `actor_id` (when given), whose call slots the learner keeps for it. The
    stream is opened when there is an unroll to send, so an actor starting up (tracing its
    policy) holds no idle call."""

    def __init__(self, address: str, max_message_bytes: int = 64 << 20, outbox_size: int = 4,
                 backoff_seconds: float = 0.5, max_backoff_seconds: float = 10.0,
                 security: Optional[Security] = None, actor_id: Optional[int] = None):
        self.address = address
        security = security or Security()
        self._channel = security.channel(
            address, channel_options(max_message_bytes, max_backoff_seconds))
        self._metadata = call_metadata(security, actor_id)
        self._stream = self._channel.stream_unary(STREAM_UNROLLS)
        self._get_parameters = self._channel.unary_unary(GET_PARAMETERS)
        self._max_message_bytes = max_message_bytes
        self._outbox: "queue.Queue" = queue.Queue(maxsize=outbox_size)
        self._backoff = (backoff_seconds, max_backoff_seconds)
        self._closed = threading.Event()
        self._carry_lock = threading.Lock()
        self._carry = []  # taken by a dead call's iterator, to be sent by the next call
        self.stream_errors = 0
        self.last_error: Optional[grpc.RpcError] = None
        self._thread = threading.Thread(target=self._run, name="unroll-stream", daemon=True)
        self._thread.start()

    def wait_until_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def send_unroll(self, message: Union[bytes, StreamedUnroll],
                    stop_event: Optional[threading.Event] = None) -> bool:
        """Queues one encoded unroll (bytes, or a `StreamedUnroll`); blocks while the outbox
        is full. Returns False if the client was closed or `stop_event` set before the unroll
        could be queued."""
        def stopped() -> bool:
            return self._closed.is_set() or (stop_event is not None and stop_event.is_set())

        return put_unless_stopped(self._outbox, message, stopped)

    def _requests(self, call: _Call):
        carried = set()  # environments whose whole unroll this call has sent
        while True:
            with self._carry_lock:
                item = self._carry.pop(0) if self._carry and not call.over else None
            if item is None:
                try:
                    item = self._outbox.get(timeout=0.1)
                except queue.Empty:
                    if call.over:
                        return
                    continue
            if call.over:
                with self._carry_lock:
                    self._carry.append(item)
                return
            if item is _CLOSE:
                return
            if isinstance(item, StreamedUnroll):
                if item.env in carried and item.continued is not None:
                    item = item.continued
                else:
                    carried.add(item.env)
                    item = item.whole
            yield item

    def _first_item(self) -> bool:
        """Waits for something to send (moved to the carry, sent first); False if closed."""
        with self._carry_lock:
            if self._carry:
                return True
        while not self._closed.is_set():
            try:
                item = self._outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _CLOSE:  # closed with nothing left to send
                return False
            with self._carry_lock:
                self._carry.insert(0, item)
            return True
        return False

    def _run(self) -> None:
        reconnect = Reconnect(*self._backoff)
        while not self._closed.is_set():
            if not self._first_item():
                return
            call = _Call()
            try:
                self._stream(self._requests(call), wait_for_ready=True,
                             metadata=self._metadata)
                return  # the outbox was closed
            except grpc.RpcError as error:
                call.over = True
                self.stream_errors += 1
                self.last_error = error
                if self._closed.is_set():
                    return
                reconnect.failed(f"unroll stream to {self.address} failed "
                                 f"({error.code().name}: {error.details()})", self._closed)

    def get_parameters(self, version: int, incarnation: int = 0, timeout: float = 30.0,
                       stop_event: Optional[threading.Event] = None) -> Optional[Parameters]:
        """The learner's parameters if they are newer than `(version, incarnation)`, else None.

        Waits up to `timeout` seconds for the learner (raising `grpc.RpcError` with
        DEADLINE_EXCEEDED after it); returns None at once when `stop_event` is set."""
        future = self._get_parameters.future(PARAMETERS_REQUEST.pack(version, incarnation),
                                             timeout=timeout, wait_for_ready=True,
                                             metadata=self._metadata)
        while stop_event is not None and not future.done():
            if stop_event.wait(0.05):
                future.cancel()
                return None
        payload = future.result()
        if not payload:
            return None
        fields, meta = codec.decode(payload, codec.PARAMS_MAGIC, self._max_message_bytes)
        return Parameters(int(meta["version"]), int(meta.get("incarnation", 0)), fields)

    def connection_error(self, version: int, incarnation: int = 0,
                         timeout: float = 5.0) -> Optional[str]:
        """Why the learner cannot be reached now, or None if it answers: one parameter pull
        that fails fast instead of waiting for the channel, so its error carries the
        transport's last one (refused connection, unknown host, failed TLS handshake, ...)
        where a waiting call that times out says only DEADLINE_EXCEEDED. For diagnosis;
        `(version, incarnation)` are the caller's, so an answer carries no parameters it has."""
        try:
            self._get_parameters(PARAMETERS_REQUEST.pack(version, incarnation), timeout=timeout,
                                 metadata=self._metadata)
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"
        return None

    def close(self, flush: bool = True, timeout: float = 5.0) -> None:
        """Ends the stream and closes the channel; with `flush`, sends what is queued first
        (waiting at most `timeout` seconds)."""
        if flush:
            try:
                self._outbox.put(_CLOSE, timeout=timeout)
                self._thread.join(timeout)
            except queue.Full:
                pass
        self._closed.set()
        self._channel.close()
        self._thread.join(timeout)
