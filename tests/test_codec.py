"""The wire codec: every spec field round-trips; malformed messages are rejected clearly."""

import functools
import struct

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.networks import Agent
from impala_tf.rpc import codec
from impala_tf.specs import unroll_wire_spec

OBSERVATIONS = {"frame": tf.TensorSpec([12, 16, 3], tf.uint8),
                "instruction": tf.TensorSpec([6], tf.int32)}


@functools.cache
def _initial_state(use_lstm):
    """The agent's core state for one stream (built once: a Keras agent costs 0.4 s)."""
    return Agent(5, OBSERVATIONS, torso="mlp", use_lstm=use_lstm, lstm_size=8).initial_state(1)


def _wire_spec(use_lstm=True):
    tensor_specs = unroll_wire_spec(OBSERVATIONS, 5, 4, _initial_state(use_lstm))
    return codec.spec_from_tensor_specs(tensor_specs)


def _random_fields(spec, seed=0):
    rng = np.random.default_rng(seed)
    fields = {}
    for name, (dtype, shape) in spec.items():
        if dtype == np.bool_:
            fields[name] = rng.random(shape) < 0.5
        elif name == "action":
            fields[name] = rng.integers(0, 5, shape).astype(dtype)
        elif dtype.kind in "iu":
            fields[name] = rng.integers(0, 100, shape).astype(dtype)
        else:
            fields[name] = rng.normal(size=shape).astype(dtype)
    return fields


def test_the_wire_spec_names_every_field():
    spec = _wire_spec()
    assert list(spec) == ["observation/frame", "observation/instruction", "action", "reward",
                          "discount", "episode_start", "behaviour_logits", "core_state/h",
                          "core_state/c"]
    assert spec["observation/frame"] == (np.dtype(np.uint8), (5, 12, 16, 3))
    assert spec["behaviour_logits"] == (np.dtype(np.float32), (5, 5))
    assert spec["core_state/h"] == (np.dtype(np.float32), (8,))
    assert "core_state/h" not in _wire_spec(use_lstm=False)


@pytest.mark.parametrize("use_lstm", [True, False])
def test_round_trip_of_every_field(use_lstm):
    spec = _wire_spec(use_lstm)
    fields = _random_fields(spec)
    message = codec.encode(codec.UNROLL_MAGIC, fields, {"policy_version": 7})
    decoded, meta = codec.decode(message, codec.UNROLL_MAGIC)
    codec.validate_fields(decoded, spec, {"action": (0, 4)})
    assert meta == {"policy_version": 7}
    assert list(decoded) == list(fields)
    for name in fields:
        assert decoded[name].dtype == fields[name].dtype
        np.testing.assert_array_equal(decoded[name], fields[name])
        assert not decoded[name].flags.writeable  # a view of the message, not a copy


def _message(fields=None, meta=None):
    spec = _wire_spec()
    return spec, codec.encode(codec.UNROLL_MAGIC, fields or _random_fields(spec), meta)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m[:-1], "declares"),
    (lambda m: m + b"x", "trailing bytes"),
    (lambda m: b"XXXX" + m[4:], "bad magic"),
    (lambda m: m[:6], "too short"),
    (lambda m: m[:4] + struct.pack("<I", 2**31) + m[8:], "header length"),
    (lambda m: m[:8] + b"}" + m[9:], "malformed header"),
    (lambda m: b"", "too short"),
])
def test_malformed_bytes_are_rejected(mutate, message):
    _, good = _message()
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(mutate(good), codec.UNROLL_MAGIC)


def _with_header(fields_header, payload=b""):
    import json
    header = json.dumps({"fields": fields_header, "meta": {}}).encode()
    return codec.UNROLL_MAGIC + struct.pack("<I", len(header)) + header + payload


@pytest.mark.parametrize("fields_header, message", [
    ([["x", "<f4", [2**30, 2**30]]], "declares"),  # far beyond the message: no allocation
    ([["x", "|O", [1]]], "not allowed"),           # object dtype: never
    ([["x", "<f4", [-1]]], "bad shape"),
    ([["x", "<f4", [1.5]]], "bad shape"),
    ([["x", "<f4", [1]], ["x", "<f4", [1]]], "duplicate"),
    ([["x", "<f4"]], "malformed field"),
    ([[f"x{i}", "|u1", []] for i in range(2000)], "at most 1024"),
])
def test_hostile_headers_are_rejected(fields_header, message):
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(_with_header(fields_header, b"\0" * 8), codec.UNROLL_MAGIC)


def test_size_limit():
    _, good = _message()
    with pytest.raises(codec.CodecError, match="exceeds the limit"):
        codec.decode(good, codec.UNROLL_MAGIC, max_bytes=len(good) - 1)


def _validate(fields):
    spec = _wire_spec()
    decoded, _ = codec.decode(codec.encode(codec.UNROLL_MAGIC, fields), codec.UNROLL_MAGIC)
    codec.validate_fields(decoded, spec, {"action": (0, 4)})


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("reward"), "missing \\['reward'\\]"),
    (lambda f: f.__setitem__("extra", np.zeros(1, np.float32)), "unexpected \\['extra'\\]"),
    (lambda f: f.__setitem__("reward", f["reward"].astype(np.float64)), "dtype"),
    (lambda f: f.__setitem__("reward", f["reward"][:-1]), "shape"),
    (lambda f: f["behaviour_logits"].__setitem__((0, 0), np.nan), "NaN or Inf"),
    (lambda f: f["core_state/c"].__setitem__(0, np.inf), "NaN or Inf"),
    (lambda f: f["action"].__setitem__(0, 5), "outside \\[0, 4\\] \\(found 5\\)"),
    (lambda f: f["action"].__setitem__(0, -1), "outside"),
])
def test_spec_violations_are_named(change, message):
    fields = {k: v.copy() for k, v in _random_fields(_wire_spec()).items()}
    change(fields)
    with pytest.raises(codec.CodecError, match=message):
        _validate(fields)


def test_reordered_fields_are_rejected():
    fields = _random_fields(_wire_spec())
    reordered = dict(reversed(list(fields.items())))
    with pytest.raises(codec.CodecError, match="order"):
        _validate(reordered)


def test_boolean_bytes_must_be_zero_or_one():
    spec, good = _message()
    fields, _ = codec.decode(good, codec.UNROLL_MAGIC)
    raw = bytearray(good)
    # Find the episode_start payload and put a 7 in it.
    offset = len(good) - sum(np.prod(s) * d.itemsize for n, (d, s) in spec.items()
                             if list(spec).index(n) >= list(spec).index("episode_start"))
    raw[int(offset)] = 7
    decoded, _ = codec.decode(bytes(raw), codec.UNROLL_MAGIC)
    with pytest.raises(codec.CodecError, match="boolean"):
        codec.validate_fields(decoded, spec)


def test_each_boolean_byte_value_and_each_bound_edge():
    """Bytes 0 and 1 are booleans, 2 is not; a value at either bound is inside it, one
    step past it is outside."""
    spec = {"flag": (np.dtype(np.bool_), (4,)), "level": (np.dtype(np.int32), (3,))}
    bounds = {"level": (0, 9)}

    def fields(flag_bytes, levels):
        return {"flag": np.array(flag_bytes, np.uint8).view(np.bool_),
                "level": np.array(levels, np.int32)}

    codec.validate_fields(fields([0, 1, 1, 0], [0, 9, 4]), spec, bounds)
    for flag_bytes, levels, message in (([0, 2, 0, 0], [0, 1, 2], "boolean"),
                                        ([0, 0, 0, 0], [-1, 1, 2], "outside"),
                                        ([0, 0, 0, 0], [0, 1, 10], "outside")):
        with pytest.raises(codec.CodecError, match=message):
            codec.validate_fields(fields(flag_bytes, levels), spec, bounds)


def test_elementwise_bounds_hold_at_their_edges_and_name_the_value_past_them():
    """Bounds given per element (a dm_env BoundedArray's arrays) are checked element by
    element: each element at its own minimum or maximum is inside; one past is refused, and
    the message names that value, not a neighbour at its edge."""
    spec = {"pos": (np.dtype(np.float32), (3,))}
    bounds = {"pos": (np.array([-1.0, 0.0, 2.0]), np.array([1.0, 5.0, 3.0]))}
    codec.validate_fields({"pos": np.array([-1, 0, 3], np.float32)}, spec, bounds)
    codec.validate_fields({"pos": np.array([1, 5, 2], np.float32)}, spec, bounds)
    for values, found in (([-1, 0, 3.5], "3.5"), ([-1.5, 0, 2], "-1.5"), ([1, 5.25, 2], "5.25")):
        with pytest.raises(codec.CodecError, match=rf"outside \[-1\.\.2, 1\.\.5\] \(found {found}\)"):
            codec.validate_fields({"pos": np.array(values, np.float32)}, spec, bounds)
    # A scalar bound whose field holds both edges and one value past: that value is named.
    with pytest.raises(codec.CodecError, match=r"\(found 10\)"):
        codec.validate_fields({"level": np.array([0, 9, 10], np.int32)},
                              {"level": (np.dtype(np.int32), (3,))}, {"level": (0, 9)})


def test_a_number_of_64_characters_is_read_and_a_longer_one_refused():
    """Any double fits in 64 characters; a longer literal is refused even where its first 64
    would read as a finite number."""
    def header(number):
        return b'{"fields": [], "meta": {"x": ' + number.encode() + b"}}"

    def raw(number):
        text = header(number)
        return codec.UNROLL_MAGIC + struct.pack("<I", len(text)) + text

    exactly = "0." + "0" * 61 + "5"  # 64 characters
    assert codec.decode(raw(exactly), codec.UNROLL_MAGIC)[1]["x"] == float(exactly)
    for longer in ("0." + "0" * 62 + "5", "1." + "0" * 200):
        with pytest.raises(codec.CodecError, match="not a finite double"):
            codec.decode(raw(longer), codec.UNROLL_MAGIC)


def test_the_layout_cache_never_holds_more_than_its_bound():
    """Headers of MAX_CACHED_LAYOUTS + 6 different field lists: the cache of checked layouts
    (keyed by header bytes) stays within its bound, and every message still decodes whole."""
    codec._layouts.clear()
    for i in range(codec.MAX_CACHED_LAYOUTS + 6):
        fields = {f"field_{i}": np.full(2, i, np.float32)}
        data = codec.encode(codec.UNROLL_MAGIC, fields, {"i": i})
        for _ in range(2):  # the second decode reads the layout from the cache
            decoded, meta = codec.decode(data, codec.UNROLL_MAGIC, 1 << 20)
            assert meta == {"i": i} and list(decoded) == [f"field_{i}"]
            np.testing.assert_array_equal(decoded[f"field_{i}"], fields[f"field_{i}"])
        assert 1 <= len(codec._layouts) <= codec.MAX_CACHED_LAYOUTS


def _raw(header: bytes, payload: bytes = b"") -> bytes:
    return codec.UNROLL_MAGIC + struct.pack("<I", len(header)) + header + payload


def test_every_decoding_limit_holds_exactly_at_its_edge():
    """Each limit of `decode` and `parse_header` admits a message at it and refuses, with its
    own message, one just past it: the total size, the header's length and nesting (brackets
    in strings not counted; closing brackets counted down), the number of fields, the rank
    and each dimension of a shape."""
    data = codec.encode(codec.UNROLL_MAGIC, {"x": np.zeros(3, np.float32)}, {"k": 1})
    assert codec.decode(data, codec.UNROLL_MAGIC, len(data))[1] == {"k": 1}
    with pytest.raises(codec.CodecError, match=f"exceeds the limit of {len(data) - 1}"):
        codec.decode(data, codec.UNROLL_MAGIC, len(data) - 1)

    def nested(depth, text=""):  # a header `depth` brackets deep: {"fields":[],"meta":{...}}
        inner = "0"
        for _ in range(depth - 2):
            inner = f"[{inner}]"
        return f'{{"fields":[],"meta":{{"a":{inner},"s":"{text}"}}}}'.encode()

    assert codec.parse_header(nested(codec.MAX_HEADER_DEPTH, "[[[[[[[[[[[[[[[[[[[[{{"))
    assert codec.parse_header(b'[' + b"[0]," * 40 + b"[0]]") is not None  # wide, not deep
    with pytest.raises(codec.CodecError, match="nested deeper than 16 levels"):
        codec.parse_header(nested(codec.MAX_HEADER_DEPTH + 1))
    for header in (nested(codec.MAX_HEADER_DEPTH), nested(codec.MAX_HEADER_DEPTH, '\\"[[')):
        assert codec.decode(_raw(header), codec.UNROLL_MAGIC)[0] == {}
    padded = b'{"fields":[],"meta":{"p":"'
    padded += b"x" * (codec.MAX_HEADER_BYTES - len(padded) - 3) + b'"}}'
    assert len(padded) == codec.MAX_HEADER_BYTES
    assert codec.decode(_raw(padded), codec.UNROLL_MAGIC)[1]["p"].startswith("xxx")
    with pytest.raises(codec.CodecError, match="declared header length 1048577 does not fit"):
        codec.decode(_raw(padded[:-3] + b'x"}}'), codec.UNROLL_MAGIC)
    short = _raw(b'{"fields":[],"meta":{}}')
    with pytest.raises(codec.CodecError, match="declared header length 24 does not fit"):
        codec.decode(short[:4] + struct.pack("<I", 24) + short[8:], codec.UNROLL_MAGIC)
    many = {f"f{i}": np.zeros(0, np.uint8) for i in range(codec.MAX_FIELDS)}
    assert len(codec.decode(codec.encode(codec.UNROLL_MAGIC, many, {}),
                            codec.UNROLL_MAGIC)[0]) == codec.MAX_FIELDS
    many["one_more"] = np.zeros(0, np.uint8)
    with pytest.raises(codec.CodecError, match="1025 fields; at most 1024"):
        codec.decode(codec.encode(codec.UNROLL_MAGIC, many, {}), codec.UNROLL_MAGIC)

    def one_field(shape, dtype="|u1", payload=b""):
        return _raw(('{"fields":[["x","%s",%s]],"meta":{}}' % (dtype, list(shape))).encode(),
                    payload)

    assert codec.decode(one_field([1] * 8, payload=b"\x07"), codec.UNROLL_MAGIC)[0][
        "x"].shape == (1,) * 8
    for shape in ([1] * 9, [2**31], [-1]):
        with pytest.raises(codec.CodecError, match="bad shape"):
            codec.decode(one_field(shape), codec.UNROLL_MAGIC)
    whole = len(one_field([100], "<f8"))  # 800 bytes, in fewer than 100
    with pytest.raises(codec.CodecError, match=f"declares more bytes than the whole message "
                       f"holds \\({whole}\\)"):
        codec.decode(one_field([100], "<f8"), codec.UNROLL_MAGIC)
    with pytest.raises(codec.CodecError, match="declares 1 bytes but only 0 remain"):
        codec.decode(one_field([1]), codec.UNROLL_MAGIC)
