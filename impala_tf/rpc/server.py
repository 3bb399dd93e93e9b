"""The learner's gRPC server: runs a `service.LearnerService` (the three RPCs, their
admission and validation) on gRPC's asyncio server in an event loop of its own thread, with
the read-ahead window, the exclusive port and the transport security.
"""

import asyncio
import threading
from typing import Optional

import grpc

from impala_tf.rpc.protocol import SERVICE, grpc_options
from impala_tf.rpc.security import Security, check_bind, split_address
from impala_tf.rpc.service import (ACT_METHOD, GET_PARAMETERS_METHOD, STREAM_UNROLLS_METHOD,
                                   LearnerService)

# How far a learner's stream reads ahead of its handler: about this many unrolls, within
# these bounds. A window much smaller than 1 MB costs the learner more CPU per frame on
# Atari's unrolls (5.0-5.3 us at 1 MB, 6.6-6.7 at one unroll, 64 streams).
READ_AHEAD_UNROLLS = 8
MIN_STREAM_WINDOW_BYTES = 16 << 10
MAX_STREAM_WINDOW_BYTES = 1 << 20


class PortInUseError(RuntimeError):
    """The learner's port is taken (by another learner, most likely)."""


class LearnerServer:
    """Runs `LearnerService` on gRPC's asyncio server, in an event loop of its own thread.

    A stream does not hold a thread: hundreds of actors share the loop, and one whose
    stream stalls (or a full queue) makes no other wait longer. The service decodes and
    validates each unroll on the loop. Which calls may hold the learner is the service's
    (`admission`: slots per actor id, idle deadlines, bytes held); `max_concurrent_rpcs` is
    gRPC's own hard cap over every call, admitted or being refused, which gRPC enforces
    with RESOURCE_EXHAUSTED (the actors retry it with backoff).

    Each stream reads ahead at most `READ_AHEAD_UNROLLS` unrolls' bytes
    (`UnrollValidator.unroll_bytes`), within 16 kB to 1 MB. While the queue is full an actor
    then has a bounded number of unrolls in flight (its client's outbox, one being written,
    those read ahead, one waiting for room) whatever their size, and so does the policy lag
    of a learner-bound run. A fixed 1 MB let each actor of Catch's 4 kB unrolls run 360
    unrolls ahead; Atari's 150 kB unrolls keep the 1 MB.

    The port is bound exclusively (no SO_REUSEPORT, which gRPC sets by default and which
    would let a second learner on the same port start silently and take half the actors'
    connections): a port in use is `PortInUseError`, a malformed one `ValueError`.

    Args:
      service: the service.
      address: `host:port` to bind (port 0 picks a free one).
      max_message_bytes: the largest message accepted.
      max_concurrent_rpcs: gRPC's cap on calls at once (None: no limit).
      security: TLS and token settings (`security.Security`); a non-loopback `address`
        needs both unless `insecure`.
      insecure: allow a non-loopback bind without them (with a warning).
      max_send_bytes: the largest message sent (parameters; None: `max_message_bytes`).
    """

    def __init__(self, service: LearnerService, address: str, max_message_bytes: int,
                 max_concurrent_rpcs: Optional[int] = None,
                 security: Optional[Security] = None, insecure: bool = False,
                 max_send_bytes: Optional[int] = None):
        self.service = service
        self.max_send_bytes = max_send_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.stream_window_bytes = min(MAX_STREAM_WINDOW_BYTES, max(
            MIN_STREAM_WINDOW_BYTES, READ_AHEAD_UNROLLS * service.validator.unroll_bytes))
        host, port = split_address(address)
        security = security or Security()
        check_bind(address, security, insecure)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="learner-rpc",
                                        daemon=True)
        self._thread.start()
        service.bind_loop(self._loop)
        try:
            self.port = self._call(self._create(
                service, address, max_message_bytes, max_concurrent_rpcs, security))
        except BaseException:
            self._close_loop()
            raise
        if self.port == 0:
            self._call(self._server.stop(None))
            self._close_loop()
            raise PortInUseError(
                f"Could not bind the learner's gRPC server to {address}: "
                + (f"port {port} is in use (is another learner running there?)" if port
                   else "no free port"))
        self.address = f"{host}:{self.port}"

    def _call(self, coroutine):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _create(self, service, address, max_message_bytes, max_concurrent_rpcs,
                      security) -> int:
        self._server = grpc.aio.server(
            options=grpc_options(max_message_bytes, self.stream_window_bytes,
                                 self.max_send_bytes)
            + [("grpc.so_reuseport", 0)],
            interceptors=security.aio_interceptors(on_denied=service.counters.deny),
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        handlers = {
            STREAM_UNROLLS_METHOD: grpc.stream_unary_rpc_method_handler(service.stream_unrolls),
            GET_PARAMETERS_METHOD: grpc.stream_unary_rpc_method_handler(service.get_parameters),
            ACT_METHOD: grpc.stream_stream_rpc_method_handler(service.act),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        try:
            if security.server_tls:
                return self._server.add_secure_port(address, security.server_credentials())
            return self._server.add_insecure_port(address)
        except RuntimeError:
            return 0

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def start(self) -> "LearnerServer":
        self._call(self._server.start())
        return self

    def stop(self, grace: Optional[float] = 1.0) -> None:
        if self._loop.is_closed():
            return
        self._call(self._server.stop(grace))
        self._close_loop()
