"""Idle, slow and tokenless callers cannot hold the learner (reliability round 3): 19 idle
calls used to fill a 2-actor learner's 20 slots and stop training; an Act call without the
token held a slot until its own deadline; two authorization headers let the last win.

Real gRPC servers on loopback; the honest actors are the project's own clients."""

import threading
import time

import grpc
import numpy as np
import pytest

from impala_tf.rpc import codec
from impala_tf.rpc.admission import (AdmissionError, CallBudget, claimed_actor_id,
                                     idle_deadline_seconds)
from impala_tf.rpc.protocol import (ACT, ACTOR_ID_METADATA, GET_PARAMETERS, PARAMETERS_REQUEST,
                                    STREAM_UNROLLS)
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.security import AUTHORIZATION, Security
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.unroll_queue import UnrollQueue
from impala_tf.rpc.validation import UnrollValidator

SPEC = {"action": (np.dtype(np.int32), (5,)), "reward": (np.dtype(np.float32), (5,))}
TOKEN = "a-token-of-at-least-16-chars"


def _unroll(actor_id, version=0):
    fields = {"action": np.zeros(5, np.int32), "reward": np.ones(5, np.float32)}
    return codec.encode(codec.UNROLL_MAGIC, fields,
                        {"policy_version": version, "actor_id": actor_id})


def _serve(idle_seconds=30.0, num_actors=4, **server_kwargs):
    unrolls = UnrollQueue(maxsize=8)
    service = LearnerService(UnrollValidator(SPEC, 3, 1 << 16, num_actors=num_actors),
                             unrolls, ParameterStore(), threading.Event(),
                             idle_seconds=idle_seconds)
    service.parameters.publish(1, {"w": np.ones(3, np.float32)})
    server = LearnerServer(service, "127.0.0.1:0", 1 << 16, **server_kwargs)
    return server.start(), service, unrolls


def _hold(release: threading.Event):
    """Requests that send nothing until released (an idle caller)."""
    release.wait(60)
    return
    yield


def test_the_idle_deadline_follows_from_the_unroll_length():
    assert idle_deadline_seconds(20) == 30.0  # Atari: the floor
    assert idle_deadline_seconds(100) == 100.0  # DMLab: 4 periods of 100 slow steps
    assert idle_deadline_seconds(20, 2.5) == 2.5
    with pytest.raises(ValueError):
        idle_deadline_seconds(20, 0)


def test_claimed_actor_ids_are_checked_and_slots_are_kept_per_id():
    assert claimed_actor_id([("other", "1")], 4) is None
    assert claimed_actor_id([(ACTOR_ID_METADATA, "3")], 4) == 3
    for bad in ([(ACTOR_ID_METADATA, "4")], [(ACTOR_ID_METADATA, "-1")],
                [(ACTOR_ID_METADATA, "1"), (ACTOR_ID_METADATA, "2")],
                [(ACTOR_ID_METADATA, "9" * 40)]):
        with pytest.raises(AdmissionError) as error:
            claimed_actor_id(bad, 4)
        assert error.value.code == "INVALID_ARGUMENT"
    budget = CallBudget(per_actor=2, anonymous=3)
    for _ in range(3):
        budget.admit("StreamUnrolls", None)
    with pytest.raises(AdmissionError, match="name no actor id"):
        budget.admit("StreamUnrolls", None)
    budget.admit("StreamUnrolls", 0)  # strangers took the pool, not actor 0's slots
    budget.admit("StreamUnrolls", 0)
    budget.admit("GetParameters", 0)  # each method has its own
    with pytest.raises(AdmissionError, match="actor 0's 2 StreamUnrolls"):
        budget.admit("StreamUnrolls", 0)
    budget.release("StreamUnrolls", 0)
    budget.admit("StreamUnrolls", 0)
    assert budget.held() == 6 and budget.refused == 2


@pytest.mark.parametrize("method", [STREAM_UNROLLS, GET_PARAMETERS, ACT])
def test_a_caller_that_sends_nothing_is_closed_at_its_deadline_and_counted(method):
    server, service, _ = _serve(idle_seconds=1.0)
    service.central = object() if method == ACT else None  # Act needs a central learner
    release = threading.Event()
    try:
        with grpc.insecure_channel(server.address) as channel:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                call = (channel.stream_stream(method)(_hold(release), timeout=30)
                        if method == ACT else channel.stream_unary(method)(_hold(release),
                                                                           timeout=30))
                list(call) if method == ACT else None
            waited = time.monotonic() - start
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no " in error.value.details() and "for 1 s" in error.value.details()
        assert 0.9 <= waited < 20
        assert service.counters.idle_closed == 1
        assert service.calls.held() == 0  # its slot is free again
    finally:
        release.set()
        server.stop(0)


def test_a_slow_sender_is_closed_like_an_idle_one_and_its_accepted_unrolls_stay():
    server, service, unrolls = _serve(idle_seconds=1.0)
    release = threading.Event()

    def slow():
        yield _unroll(1)
        release.wait(30)  # then a byte a second would look the same: no whole message

    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                channel.stream_unary(STREAM_UNROLLS)(slow(), timeout=30)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert unrolls.get(timeout=5).actor_id == 1
        assert service.counters.idle_closed == 1 and service.counters.accepted == 1
    finally:
        release.set()
        server.stop(0)


@pytest.mark.parametrize("method", [STREAM_UNROLLS, GET_PARAMETERS, ACT])
def test_a_call_without_the_token_is_refused_at_once_without_being_read(method, monkeypatch):
    """Act's refusal used to wait for a first message: a tokenless caller that sent nothing
    held a slot until its own deadline."""
    monkeypatch.setenv("IMPALA_TF_TOKEN", TOKEN)
    server, service, _ = _serve(max_concurrent_rpcs=4)
    release = threading.Event()
    try:
        with grpc.insecure_channel(server.address) as channel:
            start = time.monotonic()
            for _ in range(20):  # 5 times gRPC's cap: none of them holds a slot
                with pytest.raises(grpc.RpcError) as error:
                    call = (channel.stream_stream(method)(_hold(release), timeout=30)
                            if method == ACT else
                            channel.stream_unary(method)(_hold(release), timeout=30))
                    list(call) if method == ACT else None
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - start < 15
            honest = LearnerClient(server.address, security=Security(), actor_id=0)
            try:
                assert honest.get_parameters(-1, timeout=10).version == 1
            finally:
                honest.close(flush=False)
        assert service.counters.unauthenticated == 20
    finally:
        release.set()
        server.stop(0)


def test_two_authorization_headers_are_refused_even_if_one_is_right(monkeypatch):
    monkeypatch.setenv("IMPALA_TF_TOKEN", TOKEN)
    server, service, _ = _serve()
    try:
        with grpc.insecure_channel(server.address) as channel:
            get = channel.unary_unary(GET_PARAMETERS)
            request = PARAMETERS_REQUEST.pack(-1, 0)
            for headers in ([("wrong", "x")], []):
                metadata = [(AUTHORIZATION, "Bearer nope-nope-nope-nope"),
                            (AUTHORIZATION, f"Bearer {TOKEN}")]
                with pytest.raises(grpc.RpcError) as error:
                    get(request, timeout=10, metadata=metadata + headers)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert get(request, timeout=10, metadata=[(AUTHORIZATION, f"Bearer {TOKEN}")])
    finally:
        server.stop(0)


def test_a_stream_that_claims_one_actor_cannot_send_anothers_unrolls():
    server, service, unrolls = _serve()
    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                channel.stream_unary(STREAM_UNROLLS)(
                    iter([_unroll(2)]), timeout=10, metadata=((ACTOR_ID_METADATA, "1"),))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "opened as actor 1" in error.value.details()
        assert unrolls.empty() and service.counters.rejected == 1
    finally:
        server.stop(0)


def test_strangers_holding_every_slot_they_can_get_starve_no_actor():
    """300 idle callers that name no actor (the pool's 16 slots held, the rest refused at
    once), and 2 callers squatting on actor 3's stream slots: actors 0 and 1 still stream
    and pull parameters, and everything is counted."""
    server, service, unrolls = _serve(num_actors=4)
    release = threading.Event()
    channel = grpc.insecure_channel(server.address)
    try:
        squat = ((ACTOR_ID_METADATA, "3"),)
        held = [channel.stream_unary(STREAM_UNROLLS).future(_hold(release), timeout=60)
                for _ in range(300)]
        held += [channel.stream_unary(STREAM_UNROLLS).future(_hold(release), timeout=60,
                                                             metadata=squat)
                 for _ in range(3)]
        deadline = time.monotonic() + 30
        while service.counters.refused_calls < 300 - 16 + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.counters.refused_calls == 300 - 16 + 1
        clients = [LearnerClient(server.address, actor_id=a, backoff_seconds=0.05)
                   for a in (0, 1)]
        try:
            for version in range(5):
                for a, client in enumerate(clients):
                    assert client.get_parameters(-1, timeout=10).version == 1
                    assert client.send_unroll(_unroll(a, version))
            got = sorted((unrolls.get(timeout=10).actor_id for _ in range(10)))
            assert got == [0] * 5 + [1] * 5
        finally:
            for client in clients:
                client.close()
    finally:
        release.set()
        channel.close()
        server.stop(0)
