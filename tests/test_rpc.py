"""A real gRPC server on loopback with the real client: unrolls in, parameters out, bad
input rejected with INVALID_ARGUMENT and counted, back-pressure from a bounded queue."""

import queue
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from deadlines import wait_for
from impala_tf.rpc import codec
from impala_tf.rpc.protocol import ACTOR_ID_METADATA, GET_PARAMETERS, STREAM_UNROLLS
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import READ_AHEAD_UNROLLS, LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.validation import UnrollValidator

SPEC = {"observation/frame": (np.dtype(np.uint8), (3, 4, 4, 1)),
        "action": (np.dtype(np.int32), (3,)),
        "reward": (np.dtype(np.float32), (3,))}


def _unroll(i, reward=None, actor_id=1):
    fields = {"observation/frame": np.full((3, 4, 4, 1), i, np.uint8),
              "action": np.array([0, 1, 2], np.int32),
              "reward": np.full(3, float(i) if reward is None else reward, np.float32)}
    meta = {"policy_version": i, "actor_id": actor_id, "episodes": [[float(i), 40, "catch"]]}
    return codec.encode(codec.UNROLL_MAGIC, fields, meta)


@pytest.fixture
def server():
    unrolls = queue.Queue(maxsize=2)
    stop = threading.Event()
    service = LearnerService(UnrollValidator(SPEC, 3, 1 << 20), unrolls, ParameterStore(), stop)
    srv = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    yield srv, unrolls
    stop.set()
    srv.stop(0)


def _get(q, timeout=10.0):
    return q.get(timeout=timeout)


def test_unrolls_arrive_in_order_with_their_meta(server):
    srv, unrolls = server
    client = LearnerClient(srv.address)
    for i in range(5):
        client.send_unroll(_unroll(i))
    received = [_get(unrolls) for _ in range(5)]
    assert [u.policy_version for u in received] == list(range(5))
    assert all(u.actor_id == 1 for u in received)
    np.testing.assert_array_equal(received[3].flat()["observation/frame"], 3)
    client.close()
    assert srv.service.counters.accepted == 5 and srv.service.counters.rejected == 0
    episodes = srv.service.counters.pop_episodes()
    assert episodes.count == 5 and episodes.return_mean == 2.0  # returns 0, 1, 2, 3, 4
    assert episodes.level_counts == {"catch": 5} and episodes.length_mean == 40


def test_parameters_only_when_newer(server):
    srv, _ = server
    client = LearnerClient(srv.address)
    assert client.get_parameters(-1) is None  # nothing published yet
    srv.service.parameters.publish(3, {"dense/kernel": np.ones((2, 2), np.float32)})
    version, incarnation, fields = client.get_parameters(-1)
    assert version == 3 and incarnation == srv.service.parameters.incarnation > 0
    np.testing.assert_array_equal(fields["dense/kernel"], np.ones((2, 2)))
    assert client.get_parameters(3, incarnation) is None
    assert client.get_parameters(2, incarnation).version == 3
    # Parameters of version 9 from another learner process (one that was restarted from an
    # older checkpoint since): this learner's version 3 replaces them.
    assert client.get_parameters(9, incarnation + 1).version == 3
    client.close()


def test_a_parameter_pull_waits_for_an_absent_learner_and_can_be_interrupted():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    client = LearnerClient(address)
    with pytest.raises(grpc.RpcError) as error:
        client.get_parameters(-1, timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert client.get_parameters(-1, timeout=60.0, stop_event=stop) is None
    assert time.monotonic() - started < 5.0  # not the 60 s deadline
    client.close(flush=False)


def test_malformed_unroll_is_rejected_and_the_stream_recovers(server):
    srv, unrolls = server
    client = LearnerClient(srv.address, backoff_seconds=0.05)
    client.send_unroll(_unroll(0))
    assert _get(unrolls).policy_version == 0
    client.send_unroll(_unroll(1, reward=float("nan")))
    deadline = time.time() + 10
    while client.stream_errors == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert client.last_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN" in client.last_error.details()
    assert srv.service.counters.rejected == 1
    client.send_unroll(_unroll(2))
    assert _get(unrolls).policy_version == 2  # the next stream is served
    client.close()


def _send_in_background(client, make_unroll, total):
    """A started thread that sends `make_unroll(i)` for i < total, and the list of the i
    sent so far."""
    sent = []

    def produce():
        for i in range(total):
            client.send_unroll(make_unroll(i))
            sent.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    return producer, sent


BIG_SPEC = {"observation/frame": (np.dtype(np.uint8), (3, 512, 512, 4)),
            "action": (np.dtype(np.int32), (3,)), "reward": (np.dtype(np.float32), (3,))}


def _big_unroll(i):
    fields = {"observation/frame": np.full((3, 512, 512, 4), i, np.uint8),
              "action": np.zeros(3, np.int32), "reward": np.zeros(3, np.float32)}
    return codec.encode(codec.UNROLL_MAGIC, fields, {"policy_version": i, "actor_id": 0})


def test_bounded_queue_gives_back_pressure():
    """3 MB unrolls, a queue of 2: the sender blocks until the learner takes unrolls."""
    unrolls = queue.Queue(maxsize=2)
    stop = threading.Event()
    service = LearnerService(UnrollValidator(BIG_SPEC, 3, 8 << 20), unrolls, ParameterStore(),
                             stop)
    srv = LearnerServer(service, "127.0.0.1:0", 8 << 20).start()
    client = LearnerClient(srv.address, max_message_bytes=8 << 20, outbox_size=1)
    total = 12
    producer, sent = _send_in_background(client, _big_unroll, total)
    # Wait (up to 60 s: a loaded machine may be slow) until the queue is full and the
    # sender has sent nothing more for a whole second: it is blocked, whatever the speed.
    deadline, last, since = time.monotonic() + 60, -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(sent) != last:
            last, since = len(sent), time.monotonic()
        elif unrolls.qsize() == 2 and time.monotonic() - since >= 1.0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"waited 60 s for the sender to block; it sent {len(sent)}")
    # Blocked with at most: the queue's 2, one in the handler, one in the outbox and one
    # in gRPC's flow-control window (5 here; one more if gRPC's window probing grew it past
    # 3 MB): the actor cannot run ahead of the learner.
    assert unrolls.qsize() == 2 and len(sent) <= 6 < total, len(sent)
    blocked_at = len(sent)
    received = [_get(unrolls).policy_version for _ in range(2)]
    deadline = time.monotonic() + 30  # taking unrolls lets it go on
    while len(sent) == blocked_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sent) > blocked_at
    received += [_get(unrolls).policy_version for _ in range(total - 2)]
    producer.join(10)
    assert received == list(range(total)) and len(sent) == total
    client.close()
    stop.set()
    srv.stop(0)


CATCH_SIZED = {"observation/frame": (np.dtype(np.float32), (21, 10, 5)),
               "action": (np.dtype(np.int32), (21,))}


def _catch_sized_unroll(i):
    fields = {"observation/frame": np.full((21, 10, 5), i, np.float32),
              "action": np.zeros(21, np.int32)}
    return codec.encode(codec.UNROLL_MAGIC, fields, {"policy_version": i, "actor_id": 0})


def test_a_stalled_learner_holds_each_actor_to_a_few_unrolls_whatever_their_size():
    """Catch-sized unrolls (4 kB) and a full queue nobody takes from: the actor stops after
    its outbox, one unroll being written, what the stream reads ahead (8 unrolls' bytes) and
    one waiting for room. With a fixed 1 MB read-ahead it ran about 360 unrolls ahead: a
    policy lag of hundreds of updates once many actors feed a learner-bound run."""
    pong = UnrollValidator({"observation/frame": (np.dtype(np.uint8), (21, 84, 84, 4))}, 6,
                           1 << 20, stacked_observations={"frame": 1})
    assert pong.unroll_bytes == 21 * 84 * 84  # packed: each step's newest frame
    unrolls = queue.Queue(maxsize=2)
    stop = threading.Event()
    service = LearnerService(UnrollValidator(CATCH_SIZED, 3, 1 << 20), unrolls,
                             ParameterStore(), stop)
    srv = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    assert srv.stream_window_bytes == READ_AHEAD_UNROLLS * service.validator.unroll_bytes
    outbox, total = 4, 60
    client = LearnerClient(srv.address, outbox_size=outbox)
    producer, sent = _send_in_background(client, _catch_sized_unroll, total)
    deadline, last = time.monotonic() + 60, -1
    while unrolls.qsize() < 2 or len(sent) != last:  # until the sender gets nowhere
        assert time.monotonic() < deadline, \
            f"waited 60 s for the sender to stop (queue {unrolls.qsize()}, sent {len(sent)})"
        last = len(sent)
        time.sleep(1.0)
    in_flight = len(sent) - unrolls.qsize()
    read_ahead = srv.stream_window_bytes // len(_catch_sized_unroll(0)) + 1
    # gRPC holds up to about twice its read-ahead window (18 here, measured; 360 before)
    assert 0 < in_flight <= outbox + 2 + 2 * read_ahead
    received = [_get(unrolls).policy_version for _ in range(total)]
    producer.join(10)
    assert received == list(range(total))  # held back, none lost
    client.close()
    stop.set()
    srv.stop(0)


def test_raw_garbage_and_bad_requests_get_invalid_argument(server):
    srv, _ = server
    with grpc.insecure_channel(srv.address) as channel:
        stream = channel.stream_unary(STREAM_UNROLLS)
        with pytest.raises(grpc.RpcError) as error:
            stream(iter([b"\x00garbage" * 10]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        get = channel.unary_unary(GET_PARAMETERS)
        with pytest.raises(grpc.RpcError) as error:
            get(b"\x01\x02")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert srv.service.counters.rejected == 1


@pytest.mark.parametrize("meta, message", [
    ({"policy_version": -1, "actor_id": 0}, "policy_version"),
    ({"policy_version": 0}, "actor_id"),
    ({"policy_version": 0, "actor_id": 0, "episodes": [[float("nan"), 1, "x"]]}, "NaN"),
    ({"policy_version": 0, "actor_id": 0, "episodes": [[1e10, 1, "x"]]}, "could score"),
    ({"policy_version": 0, "actor_id": 0, "episodes": [["1", 1, "x"]]}, "episode entry"),
    ({"policy_version": 0, "actor_id": 0, "episodes": [[1, 10**10, "x"]]}, "frames"),
    ({"policy_version": 0, "actor_id": 4096}, "not one of this run's 4096 actors"),
    ({"policy_version": 0, "actor_id": 0, "episodes": "many"}, "episodes"),
])
def test_bad_meta_is_rejected(meta, message):
    validator = UnrollValidator(SPEC, 3, 1 << 20)
    fields = {"observation/frame": np.zeros((3, 4, 4, 1), np.uint8),
              "action": np.zeros(3, np.int32), "reward": np.zeros(3, np.float32)}
    with pytest.raises(codec.CodecError, match=message):
        validator(codec.encode(codec.UNROLL_MAGIC, fields, meta))


def _idle_requests(release: threading.Event):
    """A stream's requests that send nothing until `release` is set."""
    release.wait(120)
    return
    yield


def test_hundreds_of_streams_are_served_and_idle_ones_starve_nobody():
    """150 idle streams that name no actor (the old server's 64 threads froze with 70; they
    now get the anonymous pool's slots, the rest RESOURCE_EXHAUSTED), then 200 actors'
    streams that each send 3 unrolls into a queue of 4 that the consumer drains: every
    actor is served, each waiting for room without holding a thread."""
    from impala_tf.rpc.unroll_queue import UnrollQueue
    unrolls = UnrollQueue(maxsize=4)
    stop = threading.Event()
    service = LearnerService(UnrollValidator(SPEC, 3, 1 << 20, num_actors=1000), unrolls,
                             ParameterStore(), stop)
    srv = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    release = threading.Event()
    channel = grpc.insecure_channel(srv.address)
    stream = channel.stream_unary(STREAM_UNROLLS)
    idle_calls = [stream.future(_idle_requests(release), timeout=120) for _ in range(150)]
    senders = 200
    calls = [stream.future(iter([_unroll(v, actor_id=a) for v in range(3)]), timeout=120,
                           metadata=((ACTOR_ID_METADATA, str(a)),))
             for a in range(senders)]
    received = []
    deadline = time.time() + 120
    while len(received) < 3 * senders and time.time() < deadline:
        try:
            received.append(unrolls.get(timeout=1.0))
        except queue.Empty:
            continue
    assert len(received) == 3 * senders
    assert {u.actor_id for u in received} == set(range(senders))
    assert all(c.result(timeout=30) for c in calls)
    assert service.counters.rejected == 0
    release.set()
    codes = []
    for call in idle_calls:
        try:
            call.result(timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    assert codes.count(grpc.StatusCode.OK) == service.calls.anonymous
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 150 - service.calls.anonymous
    channel.close()
    stop.set()
    srv.stop(0)


def test_a_call_beyond_the_concurrency_limit_is_refused_with_a_clear_code():
    unrolls = queue.Queue(maxsize=2)
    service = LearnerService(UnrollValidator(SPEC, 3, 1 << 20), unrolls, ParameterStore(),
                             threading.Event())
    srv = LearnerServer(service, "127.0.0.1:0", 1 << 20, max_concurrent_rpcs=2).start()
    release = threading.Event()
    channel = grpc.insecure_channel(srv.address)
    held = [channel.stream_unary(STREAM_UNROLLS).future(_idle_requests(release), timeout=60)
            for _ in range(2)]
    # Both held calls admitted by the service (no other call meanwhile, which could take
    # one of the two places first); then a third is refused.
    wait_for(lambda: service.calls._anonymous_held == 2, 30, "the two held calls to start")
    with pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(GET_PARAMETERS)(b"\0" * 16, timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    for call in held:
        call.result(timeout=30)
    channel.close()
    srv.stop(0)
