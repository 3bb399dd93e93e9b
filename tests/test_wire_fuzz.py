"""Property-based fuzzing of what arrives over the network (hypothesis): the unroll decoder
and validator, and the live gRPC service on loopback.

Inputs: random bytes; valid unrolls with bytes flipped, cut, inserted or the header length
rewritten; well-formed headers with hostile contents (unknown names and dtypes, shapes of
any rank and size, sizes far beyond the payload, arbitrary meta); valid unrolls with NaN, Inf
or out-of-range actions. Properties: the decoder returns a unroll that matches the spec or
raises `CodecError`, nothing else, and allocates little beyond the message itself; the
service answers each bad message with INVALID_ARGUMENT, counts it and keeps serving.

`python experiments/fuzz_wire.py --examples N` runs these with many more examples.
"""

import json
import queue
import struct
import threading
import time
import tracemalloc

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impala_tf.rpc import codec
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.validation import UnrollValidator
from impala_tf.rpc.protocol import GET_PARAMETERS, PARAMETERS_REQUEST, STREAM_UNROLLS

NUM_ACTIONS = 4
MAX_MESSAGE_BYTES = 1 << 20
# A Catch-sized unroll with an LSTM state: T+1 = 5 steps.
SPEC = {
    "observation/frame": (np.dtype(np.uint8), (5, 10, 5, 1)),
    "action": (np.dtype(np.int32), (5,)),
    "reward": (np.dtype(np.float32), (5,)),
    "discount": (np.dtype(np.float32), (5,)),
    "episode_start": (np.dtype(np.bool_), (5,)),
    "behaviour_logits": (np.dtype(np.float32), (5, NUM_ACTIONS)),
    "core_state/c": (np.dtype(np.float32), (8,)),
    "core_state/h": (np.dtype(np.float32), (8,)),
}
VALIDATOR = UnrollValidator(SPEC, NUM_ACTIONS, MAX_MESSAGE_BYTES)
# Decoding is fast: many examples even in the suite. Each service example is a gRPC call.
DECODER_EXAMPLES = max(1000, settings.default.max_examples)
SERVICE_EXAMPLES = max(40, settings.default.max_examples // 10)


def _fields(seed: int):
    rng = np.random.default_rng(seed)
    fields = {}
    for name, (dtype, shape) in SPEC.items():
        if dtype == np.bool_:
            fields[name] = rng.random(shape) < 0.5
        elif name == "action":
            fields[name] = rng.integers(0, NUM_ACTIONS, shape).astype(dtype)
        elif name == "discount":
            fields[name] = rng.random(shape).astype(dtype)
        elif dtype == np.uint8:
            fields[name] = rng.integers(0, 256, shape).astype(dtype)
        else:
            fields[name] = rng.normal(size=shape).astype(dtype)
    return fields


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
metas = st.fixed_dictionaries(
    {"policy_version": st.integers(0, 10**6), "actor_id": st.integers(0, 1000)},
    optional={"episodes": st.lists(st.tuples(st.floats(-100, 100), st.integers(1, 10**5),
                                             st.sampled_from(["pong", "catch"])).map(list),
                                   max_size=3)})


@st.composite
def valid_unrolls(draw):
    return codec.encode(codec.UNROLL_MAGIC, _fields(draw(st.integers(0, 2**32 - 1))),
                        draw(metas))


@st.composite
def mutated_unrolls(draw):
    """A valid unroll with 1-4 byte-level mutations."""
    data = bytearray(draw(valid_unrolls()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "header_length", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "header_length" and len(data) >= 8:
            data[4:8] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


field_entries = st.tuples(
    st.sampled_from(list(SPEC)) | st.text(max_size=30),
    st.sampled_from([d.str for d in codec.ALLOWED_DTYPES.values()] + ["|O8", "<c16", "V8", "", "<U4"])
    | st.text(max_size=6),
    st.lists(st.integers(-3, 2**31 + 3)
             | st.sampled_from([-1, 0, 1, 2, 5, 2**16, 2**31 - 1, 2**31, 2**40]), max_size=9),
).map(list)


@st.composite
def hostile_headers(draw):
    """Well-formed framing around a header whose contents are anything."""
    if draw(st.booleans()):
        fields = draw(st.lists(field_entries, max_size=10))
    else:  # the spec's own entries, one of them changed
        fields = [[name, dtype.str, list(shape)] for name, (dtype, shape) in SPEC.items()]
        fields[draw(st.integers(0, len(fields) - 1))] = draw(field_entries)
    header = {"fields": fields, "meta": draw(json_values | metas)}
    if draw(st.integers(0, 9)) == 0:
        header = draw(json_values)
    raw = json.dumps(header).encode()
    payload = draw(st.binary(max_size=2048))
    return codec.UNROLL_MAGIC + struct.pack("<I", len(raw)) + raw + payload


@st.composite
def poisoned_unrolls(draw):
    """A valid unroll with a NaN, an Inf, an out-of-range action or a bad boolean."""
    fields = _fields(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["nan", "inf", "action", "bool"]))
    if kind in ("nan", "inf"):
        name = draw(st.sampled_from([n for n, (d, _) in SPEC.items() if d.kind == "f"]))
        flat = fields[name].reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = np.nan if kind == "nan" else -np.inf
    elif kind == "action":
        fields["action"][draw(st.integers(0, 4))] = draw(
            st.integers(NUM_ACTIONS, 2**31 - 1) | st.integers(-2**31, -1))
    else:
        data = bytearray(codec.encode(codec.UNROLL_MAGIC, fields, draw(metas)))
        # Rewrite one episode_start byte as 2..255 in the encoded payload.
        offset = _payload_offset(bytes(data), "episode_start")
        data[offset + draw(st.integers(0, 4))] = draw(st.integers(2, 255))
        return bytes(data)
    return codec.encode(codec.UNROLL_MAGIC, fields, draw(metas))


def _payload_offset(message: bytes, name: str) -> int:
    (length,) = struct.unpack_from("<I", message, 4)
    header = json.loads(message[8:8 + length])
    offset = 8 + length
    for field, dtype, shape in header["fields"]:
        if field == name:
            return offset
        offset += int(np.prod(shape)) * np.dtype(dtype).itemsize
    raise KeyError(name)


any_message = (st.binary(max_size=4096)
               | st.binary(max_size=512).map(lambda b: codec.UNROLL_MAGIC + b)
               | mutated_unrolls() | hostile_headers() | poisoned_unrolls())


def _check_accepted(unroll) -> None:
    """An accepted unroll is exactly what the spec allows."""
    assert list(unroll.flat()) == list(SPEC)
    for name, (dtype, shape) in SPEC.items():
        value = unroll.flat()[name]
        assert value.dtype == dtype and value.shape == shape
        if dtype.kind == "f":
            assert np.isfinite(value).all()
    assert ((unroll.flat()["action"] >= 0) & (unroll.flat()["action"] < NUM_ACTIONS)).all()
    assert set(np.unique(unroll.flat()["episode_start"].view(np.uint8))) <= {0, 1}
    assert unroll.policy_version >= 0 and unroll.actor_id >= 0


@settings(deadline=None, max_examples=DECODER_EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_the_decoder_accepts_only_spec_unrolls_and_raises_only_codec_errors(data):
    tracemalloc.start()
    try:
        unroll, episodes = VALIDATOR(data)
    except codec.CodecError as error:
        assert str(error)  # a message that says what was wrong
    else:
        _check_accepted(unroll)
        assert all(np.isfinite(e.episode_return) for e in episodes)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Arrays view the message; only the JSON header is parsed into new objects.
    assert peak <= 2 * len(data) + (4 << 20)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_unrolls())
def test_valid_unrolls_are_accepted(data):
    unroll, _ = VALIDATOR(data)
    _check_accepted(unroll)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poisoned_unrolls())
def test_nan_inf_and_out_of_range_values_are_rejected(data):
    with pytest.raises(codec.CodecError, match="NaN or Inf|outside|boolean"):
        VALIDATOR(data)


@pytest.fixture(scope="module")
def _server():
    unrolls = queue.Queue(maxsize=1000)
    stop = threading.Event()
    service = LearnerService(VALIDATOR, unrolls, ParameterStore(), stop)
    server = LearnerServer(service, "127.0.0.1:0", MAX_MESSAGE_BYTES).start()
    channel = grpc.insecure_channel(server.address)
    yield service, unrolls, channel, server.address
    channel.close()
    stop.set()
    server.stop(0)


@pytest.fixture
def live(_server):
    """The module's server (started once) with an empty queue: each test counts from the
    counters as it finds them and reads only its own unrolls, in any order."""
    unrolls = _server[1]
    while not unrolls.empty():
        unrolls.get_nowait()
    return _server


def _send(channel, messages):
    """One StreamUnrolls call; the status code it ends with."""
    try:
        channel.stream_unary(STREAM_UNROLLS)(iter(messages), timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


@settings(deadline=None, max_examples=SERVICE_EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(any_message)
def test_the_service_rejects_with_invalid_argument_counts_and_goes_on(live, data):
    service, unrolls, channel, _ = live
    rejected = service.counters.rejected
    try:
        VALIDATOR(data)
        valid = True
    except codec.CodecError:
        valid = False
    code = _send(channel, [data])
    if valid:
        assert code == grpc.StatusCode.OK
        _check_accepted(unrolls.get(timeout=10))
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert service.counters.rejected == rejected + 1
    # ...and the next, valid unroll is served.
    assert _send(channel, [codec.encode(codec.UNROLL_MAGIC, _fields(1),
                                        {"policy_version": 1, "actor_id": 2})]) == \
        grpc.StatusCode.OK
    assert unrolls.get(timeout=10).actor_id == 2


@settings(deadline=None, max_examples=SERVICE_EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_bad_parameter_requests_get_invalid_argument(live, request):
    _, _, channel, _ = live
    get = channel.unary_unary(GET_PARAMETERS)
    if len(request) == PARAMETERS_REQUEST.size:
        assert get(request, timeout=10) == b""  # nothing published: an empty answer
    else:
        with pytest.raises(grpc.RpcError) as error:
            get(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_flood_of_tiny_bad_messages_is_counted_and_the_service_goes_on(live):
    """300 streams of 1-8 garbage bytes from 8 threads, and a stream of 10,000 of them."""
    service, unrolls, channel, _ = live
    rejected = service.counters.rejected
    codes = []

    def flood(seed):
        rng = np.random.default_rng(seed)
        for _ in range(300 // 8 + 1):
            codes.append(_send(channel, [rng.bytes(int(rng.integers(1, 9)))]))

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert _send(channel, (b"\x01" for _ in range(10_000))) == grpc.StatusCode.INVALID_ARGUMENT
    assert service.counters.rejected == rejected + len(codes) + 1
    client = LearnerClient(live[3])
    client.send_unroll(codec.encode(codec.UNROLL_MAGIC, _fields(2),
                                    {"policy_version": 3, "actor_id": 4}))
    assert unrolls.get(timeout=10).actor_id == 4
    client.close()


def test_a_message_over_the_size_limit_is_refused_before_it_is_read(live):
    """gRPC refuses it with RESOURCE_EXHAUSTED; the stream it broke is counted, every time
    (gRPC may report the refusal to the handler as a plain end of the requests, about one
    time in eight: hence 20 streams). A call whose very first message is too big can be
    refused before the service's handler starts; then only gRPC knows of it."""
    service, unrolls, _, address = live
    broken = service.counters.broken_streams
    options = [("grpc.max_send_message_length", 64 << 20)]
    valid = codec.encode(codec.UNROLL_MAGIC, _fields(5), {"policy_version": 5, "actor_id": 6})
    streams = 20
    with grpc.insecure_channel(address, options=options) as channel:
        for _ in range(streams):
            assert _send(channel, [valid, b"\0" * (8 * MAX_MESSAGE_BYTES)]) == \
                grpc.StatusCode.RESOURCE_EXHAUSTED
            assert unrolls.get(timeout=10).actor_id == 6
    deadline = time.time() + 10
    while service.counters.broken_streams < broken + streams and time.time() < deadline:
        time.sleep(0.02)
    assert service.counters.broken_streams == broken + streams
    assert unrolls.empty()


def test_a_stream_its_client_closes_is_not_broken_and_one_it_cancels_is(live):
    """gRPC's request iterator can end alike for both; the service tells them apart."""
    service, unrolls, channel, _ = live
    broken = service.counters.broken_streams
    valid = codec.encode(codec.UNROLL_MAGIC, _fields(7), {"policy_version": 7, "actor_id": 8})
    assert _send(channel, [valid]) == grpc.StatusCode.OK
    assert unrolls.get(timeout=10).actor_id == 8
    assert service.counters.broken_streams == broken

    sent, cancelled = threading.Event(), threading.Event()

    def requests():
        yield valid
        sent.set()
        cancelled.wait(30)  # the stream stays open until the client cancels it

    future = channel.stream_unary(STREAM_UNROLLS).future(requests(), timeout=60)
    assert unrolls.get(timeout=10).actor_id == 8
    assert sent.wait(10)
    future.cancel()
    cancelled.set()
    deadline = time.time() + 10
    while service.counters.broken_streams == broken and time.time() < deadline:
        time.sleep(0.02)
    assert service.counters.broken_streams == broken + 1
