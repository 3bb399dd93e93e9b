"""The learner's gRPC service: actors stream unrolls in and pull newer parameters out.
`server.LearnerServer` runs it.

  /impala.Learner/StreamUnrolls  (client stream of unroll messages -> JSON summary)
      Every unroll is decoded and validated against the spec before it enters the bounded
      queue; a malformed one ends the stream with INVALID_ARGUMENT and is counted, and the
      learner goes on. A stream keeps each environment's last stack of frames, so that
      its later unrolls need not repeat them (`frame_packing`, stream continuation). A
      message above the size limit is refused by gRPC itself with RESOURCE_EXHAUSTED
      before it is read; it breaks the stream, as a cancelled call or a dropped
      connection does, and broken streams are counted too (a call refused before
      its handler started, e.g. on its very first message, only gRPC sees). A full queue
      holds the stream (not a thread) until there is room, streams in the order they
      came: actors get back-pressure.
  /impala.Learner/Act  (stream of step messages <-> stream of actions)
      Central inference (`central_inference`, `rpc.step_messages`): an environment actor
      says hello, then sends its environments' steps and gets their actions, one for one.
      A malformed message ends the stream with INVALID_ARGUMENT and is counted. A learner
      whose actors act themselves answers FAILED_PRECONDITION.
  /impala.Learner/GetParameters  (int64 version, int64 incarnation, little-endian
                                  -> parameters message; served as a one-message stream)
      Returns the newest parameters when they are newer than the caller's version or come
      from another incarnation of the learner (a learner restarted from a checkpoint may be
      at an older step than the parameters an actor holds), else an empty message.

Every call takes a slot of its actor id (metadata `impala-actor-id`) or of a small pool
for calls that name none, and is closed with DEADLINE_EXCEEDED (counted) when its caller
sends nothing for the idle deadline (`admission`). Methods are registered as generic
handlers over raw bytes (no protobuf code generation).
"""

import asyncio
import json
import logging
import queue
import threading
from typing import Optional

import grpc

from impala_tf.rpc import admission, codec, step_messages
from impala_tf.rpc.counters import ServiceCounters, printable
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.protocol import PARAMETERS_REQUEST
from impala_tf.rpc.unroll_queue import RoomWaiters
from impala_tf.rpc.validation import UnrollValidator
from impala_tf.unroll import Unroll


class _Idle(Exception):
    """A call sent nothing within its idle deadline."""


STREAM_UNROLLS_METHOD, GET_PARAMETERS_METHOD, ACT_METHOD = "StreamUnrolls", "GetParameters", "Act"
METHODS = (STREAM_UNROLLS_METHOD, GET_PARAMETERS_METHOD, ACT_METHOD)


class LearnerService:
    """The three RPCs, as coroutines of the server's event loop; see the module docstring.

    Every call first takes a slot (`admission.CallBudget`: per actor id, and a small pool for
    calls that name none); every read waits at most `idle_seconds` for the caller's next
    message, and only while the bytes that calls hold are within `byte_budget`
    (`admission.ByteBudget`). A call is ended by setting its status and returning, never by
    raising through the handler, so a rejected call leaves no frame of ours (its message,
    its stream's frames) in a reference cycle. gRPC keeps one small cycle per call of its
    own, freed by the collector's young generations (docs/reliability.md).

    Args:
      validator, unrolls, parameters, stop_event: the unroll checks, the queue, the newest
        parameters, and the learner's stop.
      idle_seconds: the idle deadline (None: `admission.idle_deadline_seconds` of the unroll
        length).
      calls: the call slots (default: `admission.CallBudget()`).
      byte_budget: bytes that calls may hold (None: the largest messages accepted, as many
        as the queue holds or the run has actors, at least `MIN_BUDGET_MESSAGES`: honest
        actors, one message in hand each, never wait for it; gating 256 streams at a
        budget of the queue's 32 cost the learner 1 us of CPU a frame on Atari ingest).
    """

    # After a stream's requests run out, how long to wait for gRPC to cancel the call: an
    # oversize message, a cancel or a dropped connection can end the requests as a clean
    # close does, with the cancellation landing just after.
    BROKEN_STREAM_GRACE_SECONDS = 0.2
    MIN_BUDGET_MESSAGES = 8

    def __init__(self, validator: UnrollValidator, unrolls: "queue.Queue[Unroll]",
                 parameters: ParameterStore, stop_event: threading.Event,
                 idle_seconds: Optional[float] = None,
                 calls: Optional[admission.CallBudget] = None,
                 byte_budget: Optional[int] = None):
        self.validator = validator
        self.unrolls = unrolls
        self.parameters = parameters
        self.stop_event = stop_event
        self.counters = ServiceCounters()
        self.central = None  # a `central_inference.CentralInference` serves Act
        self.idle_seconds = admission.idle_deadline_seconds(validator.unroll_length,
                                                            idle_seconds)
        self.calls = calls or admission.CallBudget()
        self.byte_budget = int(byte_budget or max(
            self.MIN_BUDGET_MESSAGES, getattr(unrolls, "maxsize", 0) or 0,
            validator.num_actors) * validator.max_message_bytes)
        self._room: Optional[RoomWaiters] = None
        self._bytes: Optional[admission.ByteBudget] = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called by the server with its event loop, before it serves."""
        self._room = RoomWaiters(loop, self.unrolls)
        self._bytes = admission.ByteBudget(
            self.byte_budget, max(1, min(self.validator.unroll_bytes, self.byte_budget)))

    # -- the parts every call shares -----------------------------------------------------------
    def _admit(self, method: str, context) -> Optional[int]:
        """The call's claimed actor id (None: none) once it holds a slot; else
        `admission.AdmissionError`."""
        try:
            actor_id = admission.claimed_actor_id(context.invocation_metadata(),
                                                  self.validator.num_actors)
        except admission.AdmissionError as error:  # a bad id: counted like a bad unroll
            self.counters.reject(str(error))
            raise
        try:
            self.calls.admit(method, actor_id)
        except admission.AdmissionError:
            self.counters.refuse_call()
            raise
        return actor_id

    @staticmethod
    def _end(context, code: str, details: str) -> None:
        """Ends the call with a status, without raising (see the class docstring)."""
        context.set_code(getattr(grpc.StatusCode, code))
        context.set_details(details)

    async def _read(self, iterator, session=None) -> Optional[bytes]:
        """The caller's next message (its bytes now held: `_bytes.release` them once handed
        on), None at the end of its stream, `_Idle` after the idle deadline (or at once when
        `session`, a central session, is replaced: `central_inference` ends its timer)."""
        await self._bytes.reserve()
        try:
            async with asyncio.timeout(self.idle_seconds) as timer:  # in this task: gRPC's
                if session is not None:                             # cancel still reaches it
                    session.read_timer = timer
                try:
                    data = await iterator.__anext__()
                finally:
                    if session is not None:
                        session.read_timer = None
        except StopAsyncIteration:
            self._bytes.release(self._bytes.unit)
            return None
        except asyncio.TimeoutError:
            self._bytes.release(self._bytes.unit)
            if session is None or not session.closed:
                self.counters.idle()
            raise _Idle from None
        except BaseException:
            self._bytes.release(self._bytes.unit)
            raise
        self._bytes.settle(len(data))
        return data

    def _idle_details(self, what: str) -> str:
        return (f"no {what} for {self.idle_seconds:g} s: the call is closed (idle callers "
                "must not hold the learner's slots)")

    def _validate(self, data: bytes, stream):
        """(unroll, episodes, None) or (None, None, the reason it is rejected); `stream`: what
        the stream keeps between its unrolls (`UnrollValidator.new_stream`)."""
        try:
            unroll, episodes = self.validator(data, stream)
            return unroll, episodes, None
        except codec.CodecError as error:
            return None, None, str(error)
        except Exception as error:  # noqa: BLE001 (no input may escape as UNKNOWN)
            reason = f"{type(error).__name__} while validating: {str(error)[:100]}"
            logging.warning("An unroll raised %s; rejected and counted.", printable(reason))
            return None, None, reason

    async def _enqueue(self, unroll: Unroll) -> bool:
        """Puts the unroll in the queue; while it is full the stream waits (its next message
        is not read: gRPC's flow control holds the actor back) without holding a thread.
        False if the learner stopped first."""
        front = False
        if self._room.waiting:  # others came first: join the line behind them
            await self._room.wait()
            front = True
        while True:
            if self.stop_event.is_set():
                return False
            try:
                self.unrolls.put_nowait(unroll)
                if self._room.waiting and not self.unrolls.full():
                    self._room.wake_one()  # room for the next in line too
                return True
            except queue.Full:
                await self._room.wait(front=front)
                front = True

    # -- the methods ---------------------------------------------------------------------------
    async def stream_unrolls(self, request_iterator, context) -> bytes:
        try:
            claimed = self._admit(STREAM_UNROLLS_METHOD, context)
        except admission.AdmissionError as error:
            self._end(context, error.code, str(error))
            return b""
        accepted = 0
        stream = self.validator.new_stream()  # ends with the stream, at its first rejection
        iterator = request_iterator.__aiter__()
        try:
            while True:
                try:
                    data = await self._read(iterator)
                except _Idle:
                    self._end(context, "DEADLINE_EXCEEDED", self._idle_details("unroll"))
                    return b""
                if data is None:
                    break
                try:
                    unroll, episodes, reason = self._validate(data, stream)
                    if reason is None and claimed is not None and unroll.actor_id != claimed:
                        reason = (f"actor_id {unroll.actor_id} on a stream opened as actor "
                                  f"{claimed}")
                    if reason is not None:
                        reason = self.counters.reject(reason)
                        self._end(context, "INVALID_ARGUMENT", f"malformed unroll: {reason}")
                        return b""
                    actor_id = unroll.actor_id
                    if not await self._enqueue(unroll):
                        self._end(context, "UNAVAILABLE", "the learner is stopping")
                        return b""
                finally:
                    self._bytes.release(len(data))
                    data = unroll = None
                self.counters.accept(episodes, actor_id)
                accepted += 1
            await asyncio.sleep(self.BROKEN_STREAM_GRACE_SECONDS)
        except asyncio.CancelledError:  # gRPC ended the call: oversize, cancel, disconnect
            self.counters.broken()
            raise
        except grpc.RpcError:
            self.counters.broken()
            return b""
        finally:
            self.calls.release(STREAM_UNROLLS_METHOD, claimed)
            stream = iterator = request_iterator = None
        return json.dumps({"accepted": accepted}).encode()

    async def act(self, request_iterator, context):
        """Central inference: a hello, then one step in, its actions out, until the actor
        ends the stream (see `central_inference`)."""
        central = self.central
        if central is None:
            self._end(context, "FAILED_PRECONDITION",
                      "this learner's actors act themselves (Launcher.inference = 'actor'); "
                      "run the actors with the learner's gin config")
            return
        try:
            claimed = self._admit(ACT_METHOD, context)
        except admission.AdmissionError as error:
            self._end(context, error.code, str(error))
            return
        session = None
        iterator = request_iterator.__aiter__()
        try:
            while True:
                try:
                    data = await self._read(iterator, session)
                except _Idle:
                    if session is not None and session.closed:
                        self._end(context, "ABORTED", "a new hello for actor "
                                  f"{session.actor_id} replaced this silent session")
                    else:
                        self._end(context, "DEADLINE_EXCEEDED", self._idle_details(
                            "hello" if session is None else "step"))
                    return
                if data is None:
                    return
                held, failure, reply = len(data), None, None
                try:
                    if session is None:
                        session = central.open(data, claimed)
                        reply = central.settings(session.actor_id)
                    else:
                        session.heard()
                        timestep, episodes = session.decoder.decode(data)
                except codec.CodecError as error:
                    failure = ("INVALID_ARGUMENT",
                               f"malformed step: {self.counters.reject(str(error))}")
                except step_messages.SessionRefused as error:
                    failure = (error.code, str(error))
                except Exception as error:  # noqa: BLE001 (no input may escape as UNKNOWN)
                    reason = self.counters.reject(
                        f"{type(error).__name__} while validating: {str(error)[:100]}")
                    failure = ("INVALID_ARGUMENT", reason)
                data = None
                if failure is None and reply is None and self.stop_event.is_set():
                    failure = ("UNAVAILABLE", "the learner is stopping")
                if failure is not None or reply is not None:
                    self._bytes.release(held)
                    if failure is not None:
                        self._end(context, *failure)
                        return
                    yield reply
                    continue
                try:
                    actions = await central.act(session, timestep, episodes)
                except step_messages.SessionRefused as error:
                    failure = (error.code, str(error))
                except Exception as error:  # noqa: BLE001 (inference failed: try again later)
                    failure = ("UNAVAILABLE", printable(str(error)[:200]))
                finally:
                    self._bytes.release(held)
                    timestep = episodes = None
                if failure is not None:
                    self._end(context, *failure)
                    return
                yield step_messages.encode_actions(actions)
        except asyncio.CancelledError:  # gRPC ended the call: cancel, disconnect
            self.counters.broken()
            raise
        finally:
            if session is not None:
                central.close(session)
            self.calls.release(ACT_METHOD, claimed)
            session = iterator = request_iterator = None

    async def get_parameters(self, request_iterator, context) -> bytes:
        """Served as a stream of one message (a unary call on the wire), so that a caller
        that never sends its request is held to the idle deadline like any other."""
        try:
            claimed = self._admit(GET_PARAMETERS_METHOD, context)
        except admission.AdmissionError as error:
            self._end(context, error.code, str(error))
            return b""
        try:
            try:
                request = await self._read(request_iterator.__aiter__())
            except _Idle:
                self._end(context, "DEADLINE_EXCEEDED", self._idle_details("request"))
                return b""
            if request is None:
                self._end(context, "INVALID_ARGUMENT", "no request")
                return b""
            self._bytes.release(len(request))
            if len(request) != PARAMETERS_REQUEST.size:
                self._end(context, "INVALID_ARGUMENT",
                          f"expected a {PARAMETERS_REQUEST.size}-byte (version, incarnation) "
                          f"request, got {len(request)} bytes")
                return b""
            version, incarnation = PARAMETERS_REQUEST.unpack(request)
            return self.parameters.newer_than(version, incarnation)
        finally:
            self.calls.release(GET_PARAMETERS_METHOD, claimed)
