"""Transport security: TLS for the learner's gRPC port and a shared token on every RPC.

The learner binds 127.0.0.1 by default. Binding any other address needs TLS (a server
certificate and key) and a shared token, unless `insecure=True` (`--insecure`), which is
allowed with a warning. Actors trust the learner's certificate through `ca_cert`, may present
their own (`client_cert`, `client_key`; required when the learner sets `client_ca`), and send
the token as `authorization: Bearer TOKEN` metadata on every call; the learner compares it in
constant time and answers UNAUTHENTICATED otherwise (counted). The token is read from
`token_file` or the `IMPALA_TF_TOKEN` environment variable, never from a gin binding, so it
does not land in the run's operative config.

One gin-configurable `Security` serves both sides (a shared gin file, each side using its
fields):

    Security.server_cert = '/etc/impala/learner.pem'   # learner: its certificate chain
    Security.server_key = '/etc/impala/learner.key'    # learner: its private key
    Security.client_ca = '/etc/impala/ca.pem'          # learner: require client certificates
    Security.ca_cert = '/etc/impala/ca.pem'            # actor: whom to trust for the learner
    Security.client_cert = '/etc/impala/actor.pem'     # actor: its certificate (optional)
    Security.client_key = '/etc/impala/actor.key'
    Security.server_name = 'learner.example'           # actor: name to check, if not the host
    Security.token_file = '/etc/impala/token'          # both
"""

import hmac
import ipaddress
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple, Union

import gin
import grpc

TOKEN_ENV = "IMPALA_TF_TOKEN"
AUTHORIZATION = "authorization"


class SecurityError(RuntimeError):
    """A configuration that would expose the learner without TLS and a token."""


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


@gin.configurable
class Security:
    """TLS files and the shared token (see the module docstring); all optional."""

    def __init__(self, server_cert: Optional[str] = None, server_key: Optional[str] = None,
                 client_ca: Optional[str] = None, ca_cert: Optional[str] = None,
                 client_cert: Optional[str] = None, client_key: Optional[str] = None,
                 server_name: Optional[str] = None, token_file: Optional[str] = None):
        if bool(server_cert) != bool(server_key):
            raise SecurityError("Security.server_cert and Security.server_key go together.")
        if bool(client_cert) != bool(client_key):
            raise SecurityError("Security.client_cert and Security.client_key go together.")
        self.server_cert, self.server_key, self.client_ca = server_cert, server_key, client_ca
        self.ca_cert, self.client_cert, self.client_key = ca_cert, client_cert, client_key
        self.server_name = server_name
        token = _read(token_file).decode().strip() if token_file else os.environ.get(TOKEN_ENV)
        if token is not None and len(token) < 16:
            raise SecurityError("The shared token must be at least 16 characters long.")
        self._token = token

    @property
    def token(self) -> Optional[str]:
        return self._token

    @property
    def server_tls(self) -> bool:
        return bool(self.server_cert)

    @property
    def client_tls(self) -> bool:
        return bool(self.ca_cert)

    # -- learner side -----------------------------------------------------------------------
    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(_read(self.server_key), _read(self.server_cert))],
            root_certificates=_read(self.client_ca),
            require_client_auth=bool(self.client_ca))

    def aio_interceptors(self, on_denied=None) -> List[grpc.aio.ServerInterceptor]:
        """For the learner's asyncio server: the token check, when there is a token."""
        return [TokenInterceptor(self._token, on_denied)] if self._token else []

    # -- actor side -----------------------------------------------------------------------
    def channel(self, address: str, options: Sequence[Tuple[str, object]]) -> grpc.Channel:
        options = list(options)
        if not self.client_tls:
            return grpc.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_cert), private_key=_read(self.client_key),
            certificate_chain=_read(self.client_cert))
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(address, credentials, options=options)

    def call_metadata(self) -> Optional[Tuple[Tuple[str, str], ...]]:
        return ((AUTHORIZATION, f"Bearer {self._token}"),) if self._token else None


def split_address(address: str) -> Tuple[str, int]:
    """`host:port` (or `[v6]:port`) -> (host, port), or `ValueError` naming what is wrong:
    no port, a port that is not a number, or one outside 0..65535 (0: any free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535 "
                         "(0 picks a free one)")
    return host, int(port)


def _host_ip(address: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """The IP address of `host:port` (or `[v6]:port`); None where the host is a name."""
    try:
        return ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    """Whether `host:port` (or `[v6]:port`) names this machine's loopback interface only."""
    if address.rsplit(":", 1)[0] == "localhost":
        return True
    ip = _host_ip(address)
    return ip is not None and ip.is_loopback  # a host name may resolve to any interface


def local_dial_address(address: str) -> str:
    """The address a process on this machine dials to reach a server bound at `address`.

    A wildcard host (`0.0.0.0`, `::`) is not an address to dial, and no certificate names it:
    it becomes the loopback of its family (`127.0.0.1`, `[::1]`); any other is kept."""
    ip = _host_ip(address)
    if ip is None or not ip.is_unspecified:
        return address
    port = address.rsplit(":", 1)[1]
    return f"127.0.0.1:{port}" if ip.version == 4 else f"[::1]:{port}"


def check_bind(address: str, security: Security, insecure: bool) -> None:
    """Refuses a non-loopback bind without TLS and a token, unless `insecure` (warned)."""
    if is_loopback(address) or (security.server_tls and security.token):
        return
    missing = [what for what, ok in (("TLS (Security.server_cert, Security.server_key)",
                                      security.server_tls),
                                     (f"a shared token (Security.token_file or ${TOKEN_ENV})",
                                      bool(security.token))) if not ok]
    if not insecure:
        raise SecurityError(
            f"Binding the learner to {address} exposes it beyond this machine; that needs "
            f"{' and '.join(missing)}. Pass --insecure to do it anyway on a trusted network.")
    message = (f"WARNING: the learner listens on {address} without {' and '.join(missing)} "
               "(--insecure): anyone who reaches this port can send unrolls and read the "
               "parameters.")
    logging.warning(message)
    print(message, file=sys.stderr, flush=True)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with exactly one `authorization: Bearer TOKEN`; else
    UNAUTHENTICATED, at once: the refusal reads no message (every method takes a stream of
    requests on the learner), so a caller without the token holds no slot while it sends
    nothing."""

    def __init__(self, token: str, on_denied=None):
        self._expected = f"Bearer {token}".encode()
        self._on_denied = on_denied

        async def deny(request_iterator, context):
            context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            context.set_details("missing, repeated or wrong token")
            return b""

        async def deny_stream(request_iterator, context):
            context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            context.set_details("missing, repeated or wrong token")
            return
            yield  # an async generator: the stream-stream method's shape

        self._deny_stream_unary = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_stream = grpc.stream_stream_rpc_method_handler(deny_stream)

    async def intercept_service(self, continuation, handler_call_details):
        given = [value.encode() if isinstance(value, str) else value
                 for key, value in handler_call_details.invocation_metadata or ()
                 if key == AUTHORIZATION]
        if len(given) == 1 and hmac.compare_digest(given[0], self._expected):
            return await continuation(handler_call_details)
        if self._on_denied is not None:
            self._on_denied()
        if handler_call_details.method.endswith("/Act"):
            return self._deny_stream_stream
        return self._deny_stream_unary
