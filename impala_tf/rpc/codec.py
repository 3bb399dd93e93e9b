"""Tensors on the wire as raw bytes under an explicit spec: no pickle, nothing evaluated.

A message is
    MAGIC (4 bytes) | header length (uint32, little-endian) | header | payload
where the header is UTF-8 JSON `{"fields": [[name, dtype, shape], ...], "meta": {...}}` and
the payload the fields' C-order bytes, concatenated in header order. `decode` checks every
size before it allocates or reads anything and returns read-only arrays viewing the message;
`validate_fields` then checks them against the expected spec (names, dtypes, shapes, finite
floats, value ranges). Every failure raises `CodecError` with a clear message, whatever the
header holds: JSON nested deeper than `MAX_HEADER_DEPTH`, integers of more than
`MAX_INT_DIGITS` digits, floats that overflow to infinity and the NaN/Infinity literals are
refused while parsing, before Python builds them.

An actor's unrolls share their field list, so `decode` remembers the layouts of the last
`MAX_CACHED_LAYOUTS` field lists it checked, keyed by their exact header bytes: a header
that starts with one of them parses only its meta (checked the same way).
"""

import json
import math
import re
import struct
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

UNROLL_MAGIC = b"IMU1"
PARAMS_MAGIC = b"IMP1"
_HEADER_LENGTH = struct.Struct("<I")
PREFIX_BYTES = 4 + _HEADER_LENGTH.size  # magic and header length
MAX_HEADER_BYTES = 1 << 20
MAX_FIELDS = 1024  # an unroll has a few dozen; parameters a few hundred
MAX_HEADER_DEPTH = 16  # a header nests 4 deep (header, fields, entry, shape)
MAX_INT_DIGITS = 19  # int64's range; Python would parse 4,300 digits (and then refuse more)
MAX_CACHED_LAYOUTS = 64
ALLOWED_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in (np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_)
}


def field_bytes(dtype, shape) -> int:
    """The payload bytes of a field of `dtype` and `shape` (a spec entry)."""
    return np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))


class CodecError(ValueError):
    """A message that cannot be decoded or does not match its spec."""


def encode(magic: bytes, fields: Mapping[str, np.ndarray], meta: Optional[dict] = None) -> bytes:
    """Serialises `name -> array` (in the given order) and a JSON-able `meta` dict."""
    arrays = [(name, np.ascontiguousarray(value)) for name, value in fields.items()]
    header = json.dumps({
        "fields": [[name, a.dtype.str, list(a.shape)] for name, a in arrays],
        "meta": meta or {},
    }, separators=(",", ":")).encode("utf-8")
    parts = [magic, _HEADER_LENGTH.pack(len(header)), header]
    parts.extend(a.data.cast("B") if a.size else b"" for _, a in arrays)
    return b"".join(parts)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise CodecError(f"an integer of {len(text.lstrip('-'))} digits (at most "
                         f"{MAX_INT_DIGITS} are allowed)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text[:64]) if len(text) <= 64 else math.inf  # 64 characters: any double
    if not math.isfinite(value):
        raise CodecError(f"the number {text[:40]!r} is not a finite double")
    return value


def _refuse_constant(text: str):
    raise CodecError(f"{text} is not allowed in a header")


_BRACKETS = re.compile(r"[\[\]{}]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings, scanning in C-speed chunks: the parts
    between quotes are skipped whole (escaped quotes included); stops at the first level past
    the limit."""
    depth = deepest = 0
    for part in _STRINGS.split(text):
        for match in _BRACKETS.finditer(part):
            depth += 1 if match.group() in "[{" else -1
            deepest = max(deepest, depth)
            if deepest > MAX_HEADER_DEPTH:
                return deepest
    return deepest


def parse_header(raw: bytes) -> Any:
    """A header's JSON, or `CodecError` for anything malformed or hostile (see the module
    docstring); nothing else escapes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CodecError(f"malformed header: {error}") from None
    if _nesting_depth(text) > MAX_HEADER_DEPTH:
        raise CodecError(f"malformed header: nested deeper than {MAX_HEADER_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_refuse_constant)
    except CodecError as error:
        raise CodecError(f"malformed header: {error}") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise CodecError(f"malformed header: {str(error)[:200]}") from None


def decode(
    data: bytes, magic: bytes, max_bytes: Optional[int] = None
) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Parses a message into `name -> read-only array` and its meta dict."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data)
    if max_bytes is not None and len(view) > max_bytes:
        raise CodecError(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    prefix = len(magic) + _HEADER_LENGTH.size
    if len(view) < prefix:
        raise CodecError(f"message of {len(view)} bytes is too short for a header")
    if bytes(view[: len(magic)]) != magic:
        raise CodecError(f"bad magic {bytes(view[:len(magic)])!r}, expected {magic!r}")
    (header_length,) = _HEADER_LENGTH.unpack_from(view, len(magic))
    if header_length > MAX_HEADER_BYTES or prefix + header_length > len(view):
        raise CodecError(f"declared header length {header_length} does not fit the message")
    raw = bytes(view[prefix: prefix + header_length])
    known = _decode_known_layout(view, raw, prefix + header_length)
    if known is not None:
        return known
    header = parse_header(raw)
    if not isinstance(header, dict) or "fields" not in header or "meta" not in header:
        raise CodecError("malformed header: expected an object with 'fields' and 'meta'")
    field_list, meta = header["fields"], header["meta"]
    if not isinstance(field_list, list) or not isinstance(meta, dict):
        raise CodecError("malformed header: 'fields' must be a list and 'meta' an object")
    if len(field_list) > MAX_FIELDS:
        raise CodecError(f"{len(field_list)} fields; at most {MAX_FIELDS} are allowed")
    offset = prefix + header_length
    fields: Dict[str, np.ndarray] = {}
    for entry in field_list:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not isinstance(entry[1], str) or not isinstance(entry[2], list)):
            raise CodecError(f"malformed field entry {str(entry)[:100]!r}")
        name, dtype_str, shape = entry
        if name in fields:
            raise CodecError(f"duplicate field {name!r}")
        dtype = ALLOWED_DTYPES.get(dtype_str)
        if dtype is None:
            raise CodecError(f"field {name!r}: dtype {dtype_str!r} is not allowed")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                   for d in shape) or len(shape) > 8:
            raise CodecError(f"field {name!r}: bad shape {shape!r}")
        # Python ints: no int64 overflow. Zero-size shapes count their other dimensions too
        # (numpy refuses shapes like [0, 2**30, 2**30] whatever their size).
        if math.prod(max(d, 1) for d in shape) * dtype.itemsize > len(view):
            raise CodecError(f"field {name!r}: shape {shape!r} declares more bytes than the "
                             f"whole message holds ({len(view)})")
        num_bytes = math.prod(shape) * dtype.itemsize
        if offset + num_bytes > len(view):
            raise CodecError(
                f"field {name!r}: declares {num_bytes} bytes but only {len(view) - offset} remain")
        array = np.frombuffer(view, dtype=dtype, count=num_bytes // dtype.itemsize, offset=offset)
        fields[name] = array.reshape(shape)
        offset += num_bytes
    if offset != len(view):
        raise CodecError(f"{len(view) - offset} trailing bytes after the declared fields")
    _remember_layout(raw, header, fields)
    return fields, meta


# Headers as `encode` writes them: the field list first, then the meta.
_FIELDS_OPEN, _META_KEY = b'{"fields":', b',"meta":'
_layouts: Dict[bytes, Tuple[Tuple[Tuple[str, np.dtype, tuple, int], ...], int]] = {}


def _remember_layout(raw: bytes, header: dict, fields: Mapping[str, np.ndarray]) -> None:
    """Remembers a checked header's field layout, keyed by its bytes up to the meta, when
    those bytes are exactly `encode`'s writing of the field list (so any header that starts
    with them declares these fields)."""
    if list(header) != ["fields", "meta"]:
        return
    key = (_FIELDS_OPEN + json.dumps(header["fields"], separators=(",", ":")).encode("utf-8")
           + _META_KEY)
    if not raw.startswith(key) or key in _layouts:
        return
    if len(_layouts) >= MAX_CACHED_LAYOUTS:
        _layouts.clear()
    _layouts[key] = (tuple((name, a.dtype, a.shape, a.nbytes) for name, a in fields.items()),
                     sum(a.nbytes for a in fields.values()))


def _decode_known_layout(view: memoryview, raw: bytes, offset: int):
    """(fields, meta) of a message whose header starts with a remembered field list and
    whose size matches it, parsing only the meta; None for anything else (the full path
    then decodes it, or says what is wrong)."""
    split = raw.find(_META_KEY)
    known = _layouts.get(raw[:split + len(_META_KEY)]) if split > 0 else None
    if known is None or not raw.endswith(b"}"):
        return None
    entries, payload_bytes = known
    if offset + payload_bytes != len(view):
        return None
    try:
        meta = parse_header(raw[split + len(_META_KEY):-1])
    except CodecError:
        return None
    if not isinstance(meta, dict):
        return None
    fields = {}
    for name, dtype, shape, num_bytes in entries:
        fields[name] = np.frombuffer(view, dtype=dtype, count=num_bytes // dtype.itemsize,
                                     offset=offset).reshape(shape)
        offset += num_bytes
    return fields, meta


def validate_fields(
    fields: Mapping[str, np.ndarray],
    spec: Mapping[str, Tuple[np.dtype, Tuple[int, ...]]],
    bounds: Optional[Mapping[str, Tuple[Any, Any]]] = None,
) -> None:
    """Checks names, dtypes and shapes against `spec` (name -> (dtype, shape)), that floats
    are finite, booleans are 0/1 and `bounds` (name -> (low, high), both included; scalars
    or arrays that broadcast against the field) hold. A field's values are checked by its
    minimum and maximum where that suffices (NaN or Inf shows in them), elementwise where
    they do not, or to name what is wrong."""
    if list(fields) != list(spec):
        missing = sorted(set(spec) - set(fields))
        extra = sorted(set(fields) - set(spec))
        raise CodecError(f"field names differ from the spec: missing {missing}, unexpected "
                         f"{extra}" if missing or extra else "fields are out of the spec's order")
    bounds = bounds or {}
    for name, (dtype, shape) in spec.items():
        array = fields[name]
        if array.dtype != dtype:
            raise CodecError(f"field {name!r}: dtype {array.dtype} != expected {np.dtype(dtype)}")
        if tuple(array.shape) != tuple(shape):
            raise CodecError(f"field {name!r}: shape {tuple(array.shape)} != expected "
                             f"{tuple(shape)}")
        kind, bound = array.dtype.kind, bounds.get(name)
        scalar_bound = (bound is not None and getattr(bound[0], "ndim", 0) == 0
                        and getattr(bound[1], "ndim", 0) == 0)
        if not (kind in "fb" or bound is not None) or not array.size:
            continue
        if kind in "fb" or scalar_bound:
            values = array.view(np.uint8) if kind == "b" else array
            lowest, highest = values.min(), values.max()
            fine = ((kind != "f" or (np.isfinite(lowest) and np.isfinite(highest)))
                    and (kind != "b" or highest <= 1)
                    and (not scalar_bound or (lowest >= bound[0] and highest <= bound[1])))
            if fine and (bound is None or scalar_bound):
                continue
        _check_values(name, array, bound)


def _check_values(name: str, array: np.ndarray, bound: Optional[Tuple[Any, Any]]) -> None:
    """The elementwise checks of `validate_fields`, naming the first fault."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CodecError(f"field {name!r}: contains NaN or Inf")
    if array.dtype == np.bool_ and (array.view(np.uint8) > 1).any():
        raise CodecError(f"field {name!r}: boolean bytes other than 0 and 1")
    if bound is not None:
        low, high = bound
        outside = (array < low) | (array > high)
        if outside.any():
            found = array[outside].flat[0]
            raise CodecError(f"field {name!r}: values outside [{_short(low)}, {_short(high)}] "
                             f"(found {found:.6g})")


def _short(bound) -> str:
    """A bound for a message: the number, or the range of an array of them."""
    bound = np.asarray(bound)
    if bound.size == 1:
        return f"{bound.item():.6g}"
    return f"{bound.min():.6g}..{bound.max():.6g}"


def spec_from_tensor_specs(tensor_specs: Mapping[str, Any]) -> Dict[str, Tuple[np.dtype, tuple]]:
    """`name -> tf.TensorSpec` -> `name -> (numpy dtype, shape)`."""
    return {
        name: (np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape.as_list()))
        for name, s in tensor_specs.items()
    }
