"""The learner's gRPC service: actors stream unrolls in and pull newer parameters out.

  /impala.Learner/StreamUnrolls  (client stream of unroll messages -> JSON summary)
      Every unroll is decoded and validated against the spec before it enters the bounded
      queue; a malformed one ends the stream with INVALID_ARGUMENT and is counted, and the
      learner goes on. A message above the size limit is refused by gRPC itself with
      RESOURCE_EXHAUSTED before it is read; it breaks the stream, as a cancelled call or a
      dropped connection does, and broken streams are counted too (a call refused before
      its handler started, e.g. on its very first message, only gRPC sees). A full queue
      blocks the stream: actors get back-pressure.
  /impala.Learner/GetParameters  (int64 version, int64 incarnation, little-endian
                                  -> parameters message)
      Returns the newest parameters when they are newer than the caller's version or come
      from another incarnation of the learner (a learner restarted from a checkpoint may be
      at an older step than the parameters an actor holds), else an empty message.

Methods are registered as generic handlers over raw bytes (no protobuf code generation).
"""

import json
import logging
import queue
import secrets
import struct
import threading
from concurrent import futures
from typing import List, Mapping, Optional, Tuple

import grpc
import numpy as np

from impala_tf.rpc import codec
from impala_tf.rpc.counters import ServiceCounters
from impala_tf.rpc.security import Security, check_bind, split_address
from impala_tf.rpc.validation import Unroll, UnrollValidator

__all__ = ["LearnerServer", "LearnerService", "ParameterStore", "PortInUseError", "Unroll",
           "UnrollValidator", "grpc_options"]

SERVICE = "impala.Learner"
STREAM_UNROLLS = f"/{SERVICE}/StreamUnrolls"
GET_PARAMETERS = f"/{SERVICE}/GetParameters"
PARAMETERS_REQUEST = struct.Struct("<qq")  # (version, incarnation) the caller holds


def grpc_options(max_message_bytes: int) -> List[Tuple[str, int]]:
    """Message size limits, and HTTP/2 flow control that does not grow its window by
    bandwidth-delay probing: a stream then buffers a bounded number of bytes, so a full
    learner queue stops the actors instead of filling memory."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 1 << 20),
    ]


class ParameterStore:
    """The newest parameters, encoded once per publication.

    `incarnation` is a random positive int63 drawn per store (per learner process); it rides in
    each message's meta with the version, so an actor that held parameters from a learner that
    has since been restarted reloads even if their version is higher than the new learner's."""

    def __init__(self):
        self._lock = threading.Lock()
        self._version = -1
        self._payload = b""
        self.incarnation = secrets.randbits(62) + 1

    @property
    def version(self) -> int:
        return self._version

    def publish(self, version: int, fields: Mapping[str, np.ndarray]) -> None:
        payload = codec.encode(codec.PARAMS_MAGIC, fields,
                               {"version": int(version), "incarnation": self.incarnation})
        with self._lock:
            self._version, self._payload = int(version), payload

    def newer_than(self, version: int, incarnation: int) -> bytes:
        """The payload if it is newer than what a caller holding (version, incarnation) has."""
        with self._lock:
            newer = self._version > version or (incarnation != self.incarnation
                                                 and self._version >= 0)
            return self._payload if newer else b""


def _ended_by_transport(context, grace_seconds: float = 0.2) -> bool:
    """After a stream's requests ran out: whether gRPC ended the call (a refused oversize
    message, a cancel, a dropped connection) rather than the client closing its side.

    gRPC's request iterator may report either as the end of the requests, and the call's
    cancellation may land just after; so this waits up to `grace_seconds` for the call to
    end without a status from us (at once when it does). A stream that ends normally pays
    the wait once, when its actor shuts down."""
    ended = threading.Event()
    if not context.add_callback(ended.set):  # the call has already terminated
        return True
    ended.wait(grace_seconds)
    return not context.is_active()


class LearnerService:
    """The two RPCs; see the module docstring."""

    def __init__(self, validator: UnrollValidator, unrolls: "queue.Queue[Unroll]",
                 parameters: ParameterStore, stop_event: threading.Event):
        self.validator = validator
        self.unrolls = unrolls
        self.parameters = parameters
        self.stop_event = stop_event
        self.counters = ServiceCounters()

    def stream_unrolls(self, request_iterator, context) -> bytes:
        accepted = 0
        requests = iter(request_iterator)
        while True:
            try:
                data = next(requests)
            except StopIteration:
                if _ended_by_transport(context):
                    self.counters.broken()
                    return b""
                break
            except grpc.RpcError:  # gRPC ended the call: oversize message, cancel, disconnect
                self.counters.broken()
                return b""
            try:
                unroll, episodes = self.validator(data)
                reason = None
            except codec.CodecError as error:
                reason = str(error)
            except Exception as error:  # noqa: BLE001 (no input may escape as UNKNOWN)
                reason = f"{type(error).__name__} while validating: {str(error)[:100]}"
                logging.warning("An unroll raised %s; rejected and counted.", reason)
            if reason is not None:
                self.counters.reject(reason)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed unroll: {reason}")
            while True:  # blocks while the queue is full: back-pressure on the actor
                if self.stop_event.is_set():
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the learner is stopping")
                try:
                    self.unrolls.put(unroll, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self.counters.accept(episodes, unroll.actor_id)
            accepted += 1
        return json.dumps({"accepted": accepted}).encode()

    def get_parameters(self, request: bytes, context) -> bytes:
        if len(request) != PARAMETERS_REQUEST.size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"expected a {PARAMETERS_REQUEST.size}-byte (version, incarnation) "
                          f"request, got {len(request)} bytes")
        version, incarnation = PARAMETERS_REQUEST.unpack(request)
        return self.parameters.newer_than(version, incarnation)


class PortInUseError(RuntimeError):
    """The learner's port is taken (by another learner, most likely)."""


class LearnerServer:
    """Runs `LearnerService` on a gRPC server.

    The port is bound exclusively (no SO_REUSEPORT, which gRPC sets by default and which
    would let a second learner on the same port start silently and take half the actors'
    connections): a port in use is `PortInUseError`, a malformed one `ValueError`.

    Args:
      service: the service.
      address: `host:port` to bind (port 0 picks a free one).
      max_message_bytes: the largest message accepted or sent.
      max_workers: threads serving RPCs (one per concurrent actor stream, plus a few).
      security: TLS and token settings (`security.Security`); a non-loopback `address`
        needs both unless `insecure`.
      insecure: allow a non-loopback bind without them (with a warning).
    """

    def __init__(self, service: LearnerService, address: str, max_message_bytes: int,
                 max_workers: int = 64, security: Optional[Security] = None,
                 insecure: bool = False):
        self.service = service
        self.max_workers = int(max_workers)
        host, port = split_address(address)
        security = security or Security()
        check_bind(address, security, insecure)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="learner-rpc"),
            options=grpc_options(max_message_bytes) + [("grpc.so_reuseport", 0)],
            interceptors=security.interceptors(on_denied=service.counters.deny),
        )
        handlers = {
            "StreamUnrolls": grpc.stream_unary_rpc_method_handler(service.stream_unrolls),
            "GetParameters": grpc.unary_unary_rpc_method_handler(service.get_parameters),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        try:
            if security.server_tls:
                self.port = self._server.add_secure_port(address, security.server_credentials())
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            self._server.stop(None)
            raise PortInUseError(
                f"Could not bind the learner's gRPC server to {address}: "
                + (f"port {port} is in use (is another learner running there?)" if port
                   else "no free port"))
        self.address = f"{host}:{self.port}"

    def start(self) -> "LearnerServer":
        self._server.start()
        return self

    def stop(self, grace: Optional[float] = 1.0) -> None:
        self._server.stop(grace).wait()
