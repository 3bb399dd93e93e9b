"""What an outside attack on a running learner tried, at the validator and the service:
valid-spec values no environment or policy produces, headers that broke the parser (deep
nesting, huge integers, huge floats, wrong types), and floods meant to grow the counters.
Each must end as a counted `CodecError` rejection, and the counters stay bounded.

`python experiments/fuzz_wire.py --report` runs the same kinds of case in bulk and prints
how many were rejected and how many escaped.
"""

import json
import queue
import struct
import threading

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impala_tf.envs.base import EpisodeStats
from impala_tf.rpc import codec
from impala_tf.rpc.counters import MAX_LEVELS, MAX_REASONS, OTHER_LEVELS, ServiceCounters
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.protocol import STREAM_UNROLLS
from impala_tf.rpc.validation import DEFAULT_NUM_ENVS, UnrollLimits, UnrollValidator

NUM_ACTIONS = 4
NUM_ACTORS = 8
SPEC = {
    "observation/frame": (np.dtype(np.uint8), (5, 6, 6, 1)),
    "observation/instruction": (np.dtype(np.int32), (5, 3)),
    "action": (np.dtype(np.int32), (5,)),
    "reward": (np.dtype(np.float32), (5,)),
    "discount": (np.dtype(np.float32), (5,)),
    "episode_start": (np.dtype(np.bool_), (5,)),
    "behaviour_logits": (np.dtype(np.float32), (5, NUM_ACTIONS)),
    "core_state/c": (np.dtype(np.float32), (8,)),
    "core_state/h": (np.dtype(np.float32), (8,)),
}
BOUNDS = {"frame": (0, 255), "instruction": (0, 1000)}  # as DMLab's spec gives them


def _validator(**limits):
    return UnrollValidator(SPEC, NUM_ACTIONS, 1 << 20, UnrollLimits(**limits), BOUNDS,
                           NUM_ACTORS)


def _fields(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observation/frame": rng.integers(0, 256, (5, 6, 6, 1)).astype(np.uint8),
        "observation/instruction": rng.integers(0, 1001, (5, 3)).astype(np.int32),
        "action": rng.integers(0, NUM_ACTIONS, 5).astype(np.int32),
        "reward": rng.normal(size=5).astype(np.float32),
        "discount": np.array([1, 1, 0, 1, 1], np.float32),
        "episode_start": np.array([0, 0, 0, 1, 0], bool),
        "behaviour_logits": rng.normal(size=(5, NUM_ACTIONS)).astype(np.float32),
        "core_state/c": rng.normal(size=8).astype(np.float32),
        "core_state/h": np.tanh(rng.normal(size=8)).astype(np.float32),
    }


def _message(fields=None, **meta):
    meta = {"policy_version": 3, "actor_id": 1, "episodes": [[21.0, 8000, "pong"]], **meta}
    return codec.encode(codec.UNROLL_MAGIC, fields or _fields(), meta)


def _with(name, index, value, seed=0):
    fields = _fields(seed)
    fields[name].reshape(-1)[index] = value
    return fields


def test_an_honest_unroll_passes_with_its_episodes():
    unroll, episodes = _validator()(_message())
    assert unroll.actor_id == 1 and unroll.policy_version == 3
    assert episodes == [EpisodeStats(21.0, 8000, "pong")]


@pytest.mark.parametrize("name, value, message", [
    # The attack's discounts: every batch they landed in became a skipped update.
    ("discount", 1e30, r"'discount': values outside \[0, 1\] \(found 1e\+30\)"),
    ("discount", 3.4e38, r"'discount': values outside \[0, 1\]"),
    ("discount", -1e30, r"'discount': values outside \[0, 1\]"),
    ("discount", 1.0001, r"'discount'"),
    ("reward", 3e38, r"'reward': values outside \[-1e\+06, 1e\+06\]"),
    ("reward", -2e6, r"'reward'"),
    ("behaviour_logits", 1e5, r"'behaviour_logits': values outside \[-10000, 10000\]"),
    ("core_state/c", -1e7, r"'core_state/c'"),
    ("core_state/h", 3e38, r"'core_state/h'"),
    # An instruction token past the embedding table would fail the learner's step.
    ("observation/instruction", 1001, r"'observation/instruction': values outside \[0, 1000\]"),
    ("observation/instruction", -1, r"'observation/instruction'"),
    ("action", NUM_ACTIONS, r"'action': values outside \[0, 3\]"),
])
def test_values_no_environment_or_policy_produces_are_rejected(name, value, message):
    with pytest.raises(codec.CodecError, match=message):
        _validator()(_message(_with(name, 2, value)))


def test_the_bounds_are_configurable():
    fields = _with("reward", 0, 5e6)
    with pytest.raises(codec.CodecError, match="reward"):
        _validator()(_message(fields))
    _validator(max_abs_reward=1e7)(_message(fields))
    _validator(max_abs_reward=None)(_message(_with("reward", 0, 3e38)))


@pytest.mark.parametrize("meta, message", [
    # Two returns of 1e308 averaged to inf and reached metrics.jsonl as `Infinity`.
    ({"episodes": [[1e308, 10, "pong"]]}, "could score"),
    ({"episodes": [[-1e10, 10, "pong"]]}, "could score"),
    ({"episodes": [[1.0, 10**10, "pong"]]}, "episode frames"),
    ({"episodes": [[1.0, -1, "pong"]]}, "episode frames"),
    ({"episodes": [["1.0", 10, "pong"]]}, "episode entry"),
    ({"episodes": [[1.0, 10, "x" * 201]]}, "at most 200 characters"),
    # An unroll of T=4 steps over K=256 environments (the default) ends at most 1,024.
    ({"episodes": [[1.0, 10, "pong"]] * 1025}, "at most 1024 entries"),
    # Forged statistics: the attack's 1,000 episodes of 1e9 a message moved the reported
    # mean return from 0.99 to 9.99e8; a return beyond max_abs_reward per frame is refused.
    ({"episodes": [[1e9, 100, "pong"]]}, "could score"),
    ({"episodes": [[0.5, 0, "pong"]]}, "could score"),
    # Text every sink must take: a lone surrogate killed the learner at its next summary.
    ({"episodes": [[1.0, 10, "x\ud800"]]}, "not printable"),
    ({"episodes": [[1.0, 10, "\x1b[2Jpong"]]}, "not printable"),
    ({"episodes": [[1.0, 10, "pong\n"]]}, "not printable"),
    ({"episodes": [[1.0, 10, "pong\u202e"]]}, "not printable"),
    # A client could claim any id below 2^62: 20,000 ids were 20,000 table entries.
    ({"actor_id": NUM_ACTORS}, f"not one of this run's {NUM_ACTORS} actors"),
    ({"actor_id": 2**61}, "not one of this run's"),
    ({"actor_id": -1}, "not one of this run's"),
    ({"actor_id": "1"}, "'actor_id' must be an int"),
    ({"actor_id": True}, "'actor_id' must be an int"),
    ({"policy_version": 2**62}, "'policy_version' must be an int"),
    ({"policy_version": 1.5}, "'policy_version' must be an int"),
])
def test_meta_outside_its_bounds_is_rejected(meta, message):
    with pytest.raises(codec.CodecError, match=message):
        _validator()(_message(**meta))


def test_a_refused_actor_is_rejected_and_the_others_are_not():
    validator = _validator()
    assert validator.refuse([1, 5]) == [1, 5] and validator.refuse([5]) == []
    with pytest.raises(codec.CodecError, match="actor 1 is refused"):
        validator(_message(actor_id=1))
    assert validator(_message(actor_id=2))[0].actor_id == 2
    assert validator.refused == [1, 5]


def _raw(header: str, payload: bytes = b"") -> bytes:
    raw = header.encode()
    return codec.UNROLL_MAGIC + struct.pack("<I", len(raw)) + raw + payload


def _honest_header() -> str:
    fields = [[name, dtype.str, list(shape)] for name, (dtype, shape) in SPEC.items()]
    return json.dumps({"fields": fields, "meta": {"policy_version": 0, "actor_id": 0}})


# The attack's three escapes, each a traceback and gRPC UNKNOWN before the fix.
ATTACK_HEADERS = {
    "nested 50k deep": '{"fields": [], "meta": {"x": ' + "[" * 50000 + "]" * 50000 + "}}",
    "a 4,301-digit integer": '{"fields": [], "meta": {"actor_id": ' + "7" * 4301 + "}}",
    "an episode return of 1e20": ('{"fields": [], "meta": {"policy_version": 0, "actor_id": 0, '
                                  '"episodes": [[100000000000000000000, 10, "pong"]]}}'),
}


@pytest.mark.parametrize("kind", sorted(ATTACK_HEADERS))
def test_the_attack_headers_are_codec_errors(kind):
    with pytest.raises(codec.CodecError, match="malformed header"):
        _validator()(_raw(ATTACK_HEADERS[kind]))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999",
                                     "1" + "0" * 20, "-" + "9" * 20])
def test_non_finite_and_oversized_numbers_are_refused_anywhere_in_a_header(literal):
    for where in ('{"fields": %s, "meta": {}}', '{"fields": [], "meta": {"k": [%s]}}'):
        with pytest.raises(codec.CodecError, match="malformed header"):
            codec.decode(_raw(where % literal), codec.UNROLL_MAGIC)


def test_brackets_inside_strings_do_not_count_as_nesting():
    meta = '{"fields": [], "meta": {"note": "' + "[{" * 100 + '\\"]"}}'
    assert codec.decode(_raw(meta), codec.UNROLL_MAGIC)[1]["note"].startswith("[{[{")


# -- a structure-aware fuzz of the header grammar ------------------------------------------------

# Either side of each bound the validator enforces: ids, versions, episode frames and returns.
# (An episode of 10 frames may return at most 10 x max_abs_reward = 1e7.)
_EDGES = [str(v) for v in (-1, 0, 1, NUM_ACTORS - 1, NUM_ACTORS, 2 ** 62 - 1, 2 ** 62, 10 ** 9,
                           10 ** 9 + 1, 1.0, 10.5, 1e7, -1e7, 10000001, -10000000.5)] + [
    "true", "null", '"7"']
_numbers = st.one_of(
    st.integers(-10**25, 10**25).map(str),
    st.sampled_from(_EDGES),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.tuples(st.integers(-9, 9), st.integers(-2000, 2000)).map(lambda t: f"{t[0]}e{t[1]}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e308", "-0", "0.0", "1.7976931348623157e308",
                     "4.9e-324", "true", "false", "null", '""', '"x"', "[]", "{}"]),
)


@st.composite
def _values(draw, depth=0):
    kind = draw(st.integers(0, 3 if depth < 6 else 0))
    if kind == 0:
        return draw(_numbers)
    if kind == 1:
        return "[" + ",".join(draw(st.lists(_values(depth + 1), max_size=4))) + "]"
    if kind == 2:
        items = draw(st.lists(st.tuples(st.sampled_from(
            ["fields", "meta", "actor_id", "policy_version", "episodes", "x"]),
            _values(depth + 1)), max_size=4))
        return "{" + ",".join(f'"{k}":{v}' for k, v in items) + "}"
    n = draw(st.integers(17, 60000))
    return "[" * n + "]" * n


@st.composite
def hostile_headers(draw):
    """The honest header with one part replaced by any value of the grammar, or deeply
    nested, or a value of the grammar alone."""
    honest = json.loads(_honest_header())
    choice = draw(st.integers(0, 5))
    value = draw(_values())
    if choice == 0:
        return value
    if choice == 1:
        return json.dumps({"fields": honest["fields"]})[:-1] + f',"meta":{value}}}'
    if choice == 2:  # one meta key
        key = draw(st.sampled_from(["actor_id", "policy_version", "episodes"]))
        meta = dict(honest["meta"])
        meta[key] = "@"
        return json.dumps({"fields": honest["fields"], "meta": meta}).replace('"@"', value)
    if choice == 3:  # one episode entry's element
        entry = ["@", 10, '"pong"']
        entry[draw(st.integers(0, 2))] = value
        entry = [e if e != "@" else "1.0" for e in entry]
        meta = json.dumps(honest["meta"])[:-1] + f',"episodes":[[{",".join(map(str, entry))}]]}}'
        return '{"fields":' + json.dumps(honest["fields"]) + ',"meta":' + meta + "}"
    if choice == 4:  # one element of one field entry
        fields = honest["fields"]
        i, j = draw(st.integers(0, len(fields) - 1)), draw(st.integers(0, 2))
        fields[i][j] = "@"
        return json.dumps({"fields": fields, "meta": honest["meta"]}).replace('"@"', value)
    return '{"fields":' + value + ',"meta":{}}'


# The honest unroll's payload: the only one an unroll of SPEC can have; a hostile header's
# case gets it or up to 64 random bytes (too few for SPEC's 449, so never acceptable).
_HONEST_RAW = codec.encode(codec.UNROLL_MAGIC, _fields(), {})
HONEST_PAYLOAD = _HONEST_RAW[len(codec.UNROLL_MAGIC) + 4 + struct.unpack(
    "<I", _HONEST_RAW[len(codec.UNROLL_MAGIC):len(codec.UNROLL_MAGIC) + 4])[0]:]


def _refuse_constant(name):
    raise ValueError(name)


def _assert_acceptable(header: str, payload: bytes, unroll, episodes) -> None:
    """The validator's contract (rpc/validation.py's table), checked independently of it on
    a message it accepted: SPEC's exact fields with their payload, ids in range, episodes
    well formed. A hostile header that was accepted without meeting it fails the test."""
    assert payload == HONEST_PAYLOAD, f"accepted a {len(payload)}-byte payload: {header[:300]}"
    parsed = json.loads(header, parse_constant=_refuse_constant)  # plain JSON, finite numbers
    assert isinstance(parsed, dict) and isinstance(parsed.get("meta"), dict), header[:300]
    assert parsed["fields"] == json.loads(_honest_header())["fields"], header[:300]
    meta = parsed["meta"]
    assert type(meta["actor_id"]) is int and 0 <= meta["actor_id"] < NUM_ACTORS, header[:300]
    assert type(meta["policy_version"]) is int and 0 <= meta["policy_version"] < 2 ** 62
    assert (unroll.actor_id, unroll.policy_version) == (meta["actor_id"], meta["policy_version"])
    raw_episodes = meta.get("episodes", [])
    # T = 4 steps, each of an actor's DEFAULT_NUM_ENVS environments ending one episode a step
    assert isinstance(raw_episodes, list) and len(raw_episodes) <= 4 * DEFAULT_NUM_ENVS
    limits = UnrollLimits()
    for entry in raw_episodes:
        assert isinstance(entry, list) and len(entry) == 3, entry
        episode_return, frames, level = entry
        assert type(episode_return) in (int, float) and type(frames) is int, entry
        assert 0 <= frames <= limits.max_episode_frames, entry
        if limits.max_abs_reward is not None:
            assert abs(episode_return) <= limits.max_abs_reward * frames, entry
        assert isinstance(level, str) and len(level) <= 200 and level.isprintable(), entry
    assert episodes == [EpisodeStats(float(r), f, level) for r, f, level in raw_episodes]


@st.composite
def edge_headers(draw):
    """The honest header with one id, or one reported episode's return or frames, at either
    side of its bound."""
    meta = dict(json.loads(_honest_header())["meta"])
    if draw(st.booleans()):
        meta[draw(st.sampled_from(["actor_id", "policy_version"]))] = "@"
    else:
        entry = ["@", 10, "pong"]
        entry[draw(st.integers(0, 1))] = "@"
        meta["episodes"] = [entry]
    header = json.dumps({"fields": json.loads(_honest_header())["fields"], "meta": meta})
    return header.replace('"@"', draw(st.sampled_from(_EDGES)))


@settings(deadline=None, max_examples=max(300, settings.default.max_examples),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example,
                                 HealthCheck.data_too_large])
@given(st.one_of(
    st.tuples(hostile_headers(), st.one_of(st.binary(max_size=64), st.just(HONEST_PAYLOAD))),
    st.tuples(edge_headers(), st.just(HONEST_PAYLOAD))))
def test_every_hostile_header_is_a_codec_error_unless_it_meets_the_contract(case):
    header, payload = case
    try:
        unroll, episodes = _validator()(_raw(header, payload))
    except codec.CodecError as error:
        assert str(error)
        return
    _assert_acceptable(header, payload, unroll, episodes)


def test_the_contract_check_fails_an_accepted_header_that_breaks_it():
    """The check above is not vacuous: the honest header passes it; with an actor id out of
    range, a short payload or a bad episode (as a broken validator might let through) it fails."""
    honest = json.loads(_honest_header())
    header = json.dumps(honest)
    unroll, episodes = _validator()(_raw(header, HONEST_PAYLOAD))
    _assert_acceptable(header, HONEST_PAYLOAD, unroll, episodes)
    wrong_id = json.dumps({**honest, "meta": {"policy_version": 0, "actor_id": NUM_ACTORS}})
    bad_episode = json.dumps({**honest, "meta": {"policy_version": 0, "actor_id": 0,
                                                 "episodes": [[1.0, -1, "pong"]]}})
    for breaking, payload in ((wrong_id, HONEST_PAYLOAD), (header, HONEST_PAYLOAD[:-1]),
                              (bad_episode, HONEST_PAYLOAD)):
        with pytest.raises(AssertionError):
            _assert_acceptable(breaking, payload, unroll, episodes)


# -- bounded counters ----------------------------------------------------------------------------

def test_distinct_rejection_reasons_are_pooled_beyond_a_bound():
    counters = ServiceCounters()
    for i in range(40_000):
        counters.reject(f"field 'x': values outside [0, 1] (found {i})")
    assert counters.rejected == 40_000
    assert len(counters.rejected_reasons) == MAX_REASONS + 1
    assert counters.rejected_reasons["(other reasons)"] == 40_000 - MAX_REASONS


def test_episode_tallies_hold_sums_and_a_bounded_set_of_levels():
    counters = ServiceCounters()
    for i in range(2 * MAX_LEVELS):
        counters.accept([EpisodeStats(float(i), 4, f"level{i}")], actor_id=0)
    tally = counters.pop_episodes()
    assert tally.count == 2 * MAX_LEVELS
    assert tally.return_mean == pytest.approx(np.mean(np.arange(2 * MAX_LEVELS)))
    assert len(tally.level_counts) == MAX_LEVELS + 1
    assert tally.level_counts[OTHER_LEVELS] == MAX_LEVELS
    assert counters.pop_episodes().count == 0


def test_ids_outside_the_runs_actors_never_reach_the_per_actor_table():
    """20,000 claimed ids were 20,000 entries (520 KB in every metrics line)."""
    unrolls = queue.Queue()
    service = LearnerService(_validator(), unrolls, ParameterStore(), threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stream = channel.stream_unary(STREAM_UNROLLS)
            codes = set()
            for actor_id in [NUM_ACTORS, 10**6, 2**61, 3, 2**62 - 1]:
                try:
                    stream(iter([_message(actor_id=actor_id)]), timeout=10)
                    codes.add(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.add(error.code())
        assert codes == {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
        assert service.counters.by_actor() == {"3": 1}
        assert service.counters.rejected == 4
    finally:
        server.stop(0)


@pytest.mark.parametrize("kind", sorted(ATTACK_HEADERS))
def test_the_attack_headers_get_invalid_argument_and_are_counted(kind):
    unrolls = queue.Queue()
    service = LearnerService(_validator(), unrolls, ParameterStore(), threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                channel.stream_unary(STREAM_UNROLLS)(iter([_raw(ATTACK_HEADERS[kind])]),
                                                     timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed header" in error.value.details()
        assert service.counters.rejected == 1
    finally:
        server.stop(0)


def test_an_unexpected_validator_error_is_a_counted_rejection_not_unknown():
    """A second line: whatever a future validator bug raises, the stream ends with
    INVALID_ARGUMENT and a count, not gRPC's UNKNOWN and a traceback."""
    class BrokenValidator(UnrollValidator):
        def __call__(self, data, stream=None):
            raise TypeError("a bug")

    service = LearnerService(BrokenValidator(SPEC, NUM_ACTIONS, 1 << 20), queue.Queue(),
                             ParameterStore(),
                             threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as error:
                channel.stream_unary(STREAM_UNROLLS)(iter([_message()]), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "TypeError" in error.value.details()
        assert service.counters.rejected == 1
    finally:
        server.stop(0)
