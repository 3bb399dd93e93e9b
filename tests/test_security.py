"""Transport security on a real gRPC server: a non-loopback bind needs TLS and a token (or
--insecure, warned); the token is checked on every RPC (UNAUTHENTICATED, counted); TLS
refuses plaintext clients and clients that do not trust the learner's certificate; with a
client CA, clients without a certificate are refused. Nothing on the network path unpickles
or evaluates data. Certificates are made with the openssl command line."""

import ast
import glob
import logging
import os
import queue
import threading
import time

import gin
import grpc
import numpy as np
import pytest
from pki import TOKEN, make_pki

from impala_tf import config
from impala_tf.acting.actor import Actor
from impala_tf.rpc import codec
from impala_tf.rpc.client import LearnerClient, LearnerUnreachableError
from impala_tf.rpc.security import (TOKEN_ENV, Security, SecurityError, check_bind,
                                    is_loopback, local_dial_address)
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.validation import UnrollValidator

SPEC = {"action": (np.dtype(np.int32), (3,)), "reward": (np.dtype(np.float32), (3,))}
RPC_DIR = os.path.join(os.path.dirname(__file__), "..", "impala_tf", "rpc")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _unroll(i):
    fields = {"action": np.array([0, 1, 2], np.int32), "reward": np.full(3, i, np.float32)}
    return codec.encode(codec.UNROLL_MAGIC, fields, {"policy_version": i, "actor_id": 0})


class _Learner:
    def __init__(self, security, address="0.0.0.0:0", insecure=False):
        self.unrolls = queue.Queue(maxsize=8)
        self.stop_event = threading.Event()
        self.service = LearnerService(UnrollValidator(SPEC, 3, 1 << 20), self.unrolls,
                                      ParameterStore(), self.stop_event)
        self.service.parameters.publish(5, {"w": np.arange(4, dtype=np.float32)})
        self.server = LearnerServer(self.service, address, 1 << 20, security=security,
                                    insecure=insecure).start()
        self.address = f"127.0.0.1:{self.server.port}"

    def close(self):
        self.stop_event.set()
        self.server.stop(0)


# A client whose TLS handshake fails waits for a channel that never becomes ready.
REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _pull(address, security):
    """One parameter pull; its status code."""
    client = LearnerClient(address, security=security)
    try:
        client.get_parameters(-1, timeout=2.0)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        client.close(flush=False)


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:8470", True), ("127.3.2.1:1", True), ("[::1]:8470", True),
    ("localhost:8470", True), ("0.0.0.0:8470", False), ("10.1.2.3:8470", False),
    ("[::]:8470", False), ("learner.example:8470", False),
])
def test_which_addresses_are_loopback(address, loopback):
    assert is_loopback(address) == loopback


@pytest.mark.parametrize("bound, dialled", [
    ("0.0.0.0:8470", "127.0.0.1:8470"), ("[::]:8470", "[::1]:8470"),
    ("10.1.2.3:8470", "10.1.2.3:8470"), ("127.0.0.1:0", "127.0.0.1:0"),
    ("[fe80::1]:5", "[fe80::1]:5"), ("learner.example:8470", "learner.example:8470"),
])
def test_local_processes_dial_loopback_for_a_wildcard_bind(bound, dialled):
    assert local_dial_address(bound) == dialled


def test_a_non_loopback_bind_needs_tls_and_a_token_or_insecure(pki, capsys):
    with pytest.raises(SecurityError, match=r"TLS .* and a shared token .*--insecure"):
        check_bind("0.0.0.0:0", Security(), insecure=False)
    with pytest.raises(SecurityError, match="a shared token"):
        check_bind("0.0.0.0:0", Security(server_cert=pki("learner.pem"),
                                         server_key=pki("learner.key")), insecure=False)
    with pytest.raises(SecurityError, match="TLS"):
        check_bind("0.0.0.0:0", Security(token_file=pki("token")), insecure=False)
    check_bind("0.0.0.0:0", Security(server_cert=pki("learner.pem"),
                                     server_key=pki("learner.key"),
                                     token_file=pki("token")), insecure=False)
    check_bind("127.0.0.1:0", Security(), insecure=False)
    assert "WARNING" not in capsys.readouterr().err
    # --insecure: allowed, with a warning, and served in plaintext without a token.
    learner = _Learner(Security(), insecure=True)
    try:
        assert "WARNING" in capsys.readouterr().err
        assert _pull(learner.address, Security()) == grpc.StatusCode.OK
    finally:
        learner.close()
    with pytest.raises(SecurityError, match="at least 16"):
        Security(token_file=_short_token_file(pki))


def _short_token_file(pki):
    path = pki("short_token")
    with open(path, "w") as f:
        f.write("short")
    return path


def test_tls_and_the_token_on_every_call(pki):
    server = Security(server_cert=pki("learner.pem"), server_key=pki("learner.key"),
                      token_file=pki("token"))
    learner = _Learner(server)  # binds 0.0.0.0: allowed with TLS and a token
    good = Security(ca_cert=pki("ca.pem"), token_file=pki("token"))
    try:
        client = LearnerClient(learner.address, security=good)
        assert client.get_parameters(-1, timeout=10.0).version == 5
        client.send_unroll(_unroll(3))
        assert learner.unrolls.get(timeout=10).policy_version == 3
        client.close()
        assert learner.service.counters.unauthenticated == 0

        # A wrong token and no token: UNAUTHENTICATED on both RPCs, each call counted.
        with open(pki("wrong_token"), "w") as f:
            f.write("not-the-token-but-long-enough")
        wrong = Security(ca_cert=pki("ca.pem"), token_file=pki("wrong_token"))
        assert _pull(learner.address, wrong) == grpc.StatusCode.UNAUTHENTICATED
        assert _pull(learner.address, Security(ca_cert=pki("ca.pem"))) == \
            grpc.StatusCode.UNAUTHENTICATED
        streamer = LearnerClient(learner.address, security=wrong, backoff_seconds=0.05)
        streamer.send_unroll(_unroll(4))
        deadline = time.time() + 10
        while streamer.last_error is None and time.time() < deadline:
            time.sleep(0.02)
        assert streamer.last_error.code() == grpc.StatusCode.UNAUTHENTICATED
        streamer.close(flush=False)
        assert learner.unrolls.empty()
        assert learner.service.counters.unauthenticated >= 3
        assert learner.service.counters.accepted == 1

        # TLS: a plaintext client, and one that trusts another CA, never get through.
        assert _pull(learner.address, Security(token_file=pki("token"))) in REFUSED
        assert _pull(learner.address, Security(ca_cert=pki("other_ca.pem"),
                                               token_file=pki("token"))) in REFUSED
        assert learner.service.counters.accepted == 1 and learner.unrolls.empty()
    finally:
        learner.close()


def test_client_certificates_when_the_learner_asks_for_them(pki):
    server = Security(server_cert=pki("learner.pem"), server_key=pki("learner.key"),
                      client_ca=pki("ca.pem"), token_file=pki("token"))
    learner = _Learner(server)
    try:
        without = Security(ca_cert=pki("ca.pem"), token_file=pki("token"))
        assert _pull(learner.address, without) in REFUSED
        with_cert = Security(ca_cert=pki("ca.pem"), client_cert=pki("actor.pem"),
                             client_key=pki("actor.key"), token_file=pki("token"))
        assert _pull(learner.address, with_cert) == grpc.StatusCode.OK
    finally:
        learner.close()


def test_an_actor_that_distrusts_the_learner_says_why_and_gives_up_when_told(pki, caplog):
    """A waiting pull only times out (DEADLINE_EXCEEDED); the actor's warning and its
    LearnerUnreachableError name the cause, here the TLS handshake its CA refuses. With the
    right CA the same learner answers and the probe finds nothing wrong."""
    learner = _Learner(Security(server_cert=pki("learner.pem"), server_key=pki("learner.key"),
                                token_file=pki("token")))
    try:
        config.parse_config(["catch.gin"], [
            f"Security.ca_cert = '{pki('other_ca.pem')}'",
            f"Security.token_file = '{pki('token')}'", "Actor.num_envs = 1",
            "Actor.rpc_timeout_seconds = 1.0", "Actor.reconnect_backoff_seconds = 0.1",
            "Actor.max_reconnect_backoff_seconds = 0.2", "Actor.reconnect_timeout_seconds = 2.0"])
        actor = Actor(learner.address)
        with caplog.at_level(logging.WARNING):
            with pytest.raises(LearnerUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
                actor.refresh_parameters()
        assert "unreachable (DEADLINE_EXCEEDED; UNAVAILABLE" in caplog.text
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        actor.close(flush=False)
        trusting = LearnerClient(learner.address, security=Security(
            ca_cert=pki("ca.pem"), token_file=pki("token")))
        assert trusting.connection_error(-1) is None
        trusting.close()
    finally:
        gin.clear_config()
        learner.close()


def test_the_token_comes_from_the_environment_too(pki, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert Security().token == TOKEN
    assert Security(token_file=pki("token")).token == TOKEN


_BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "cloudpickle",
                   "yaml", "joblib"}


def _unsafe_uses(path):
    """(line, what) for each import of a deserialiser of code or objects, eval/exec-like
    call or allow_pickle in the Python file at `path`."""
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in _BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in _BANNED_MODULES:
                found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Call):
            name = (node.func.id if isinstance(node.func, ast.Name) else
                    node.func.attr if isinstance(node.func, ast.Attribute) else None)
            if name in {"eval", "exec", "compile", "__import__", "loads_pickle", "load_model"}:
                if not (name == "compile" and isinstance(node.func, ast.Attribute)):
                    found.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            found.append((node.lineno, "allow_pickle="))
    return found


def test_nothing_on_the_network_path_unpickles_or_evaluates():
    """No module of impala_tf (the network path is rpc/, but the learner, central
    inference, the batcher and the actors handle what arrives from it too, and a module
    may join that path later) imports a deserialiser of code or objects, or calls
    eval/exec; numpy arrays are built with frombuffer from allowed dtypes only."""
    package = os.path.join(os.path.dirname(__file__), "..", "impala_tf")
    files = sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True))
    names = {os.path.relpath(f, package) for f in files}
    assert {"rpc/codec.py", "learning/central_inference.py", "learning/learner.py",
            "learning/endpoint.py", "acting/actor.py", "acting/env_actor.py"} <= names
    unsafe = {os.path.relpath(f, package): _unsafe_uses(f) for f in files}
    assert not {name: uses for name, uses in unsafe.items() if uses}


def test_the_scan_finds_each_kind_of_unsafe_use(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import pickle\nfrom yaml import load\nimport marshal as m\n"
                    "x = eval('1')\nnp.load('f', allow_pickle=True)\n"
                    "re.compile('ok')\n")
    assert [what for _, what in _unsafe_uses(str(path))] == [
        "import pickle", "from yaml import", "import marshal", "eval()", "allow_pickle="]


def test_the_wire_dtypes_hold_no_objects():
    assert all(np.dtype(d).kind != "O" for d in codec.ALLOWED_DTYPES.values())
