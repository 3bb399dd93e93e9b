"""Each frame crosses the wire once: an unroll's stacked observations (`frames.PackedStack`)
as the fields of an unroll message, and back.

An Atari observation stacks the last S frames, `[T+1, H, W, S*k]` per unroll with k channels
a frame (1 grey, 3 RGB), oldest first. `pack` replaces the field `observation/NAME` (a
`frames.PackedStack`, or whole stacks) by

  observation/NAME/newest     [T+1, H, W, k]          each step's newest frame
  observation/NAME/first      [H, W, (S-1)*k]         the older frames of step 0
  observation/NAME/restart    [T+1] bool              step t's stack is not step t-1's shifted
  observation/NAME/restarted  [R, H, W, (S-1)*k]      the older frames of those R steps

(R varies per unroll, at most T); `frames` says how they make the stacks.

**Stream continuation.** An unroll's step 0 is the previous unroll's step T (the bootstrap
step), so `first` repeats frames the learner already has. On one stream, an actor leaves it
out of every unroll but an environment's first (`StreamedUnroll.continued`, meta `env`
naming the environment within the actor); the learner keeps, per stream and environment,
the last stack it accepted (`StreamFrames`) and takes step 0's older frames from it, after
checking that step 0's newest frame is that stack's newest. A stream ends at the first
rejected unroll, and a new stream starts every environment afresh, so the two sides never
disagree about what came before. A T=20 Pong unroll: 21 stacks (592,704 bytes of frames),
24 frames packed (169,344), 21 frames continued (148,176).

`unpack` checks every packed field before it uses it and raises `codec.CodecError` for
anything malformed. It builds no stacks: each becomes a `frames.PackedStack`, which the
batcher writes straight into its batch.
"""

from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from impala_tf import frames
from impala_tf.frames import PackedStack
from impala_tf.rpc import codec

PARTS = ("newest", "first", "restart", "restarted")
# What an unroll of a stream leaves out once the stream holds its environment's last stack.
CONTINUED_PARTS = ("newest", "restart", "restarted")


def _split(stack_shape: Tuple[int, ...], k: int) -> Tuple[int, int]:
    channels = stack_shape[-1]
    frames.stack_depth(channels, k)
    return channels, k


def _observation(name: str) -> Optional[str]:
    return name[len("observation/"):] if name.startswith("observation/") else None


def pack(fields: Mapping[str, object], stacked: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """`fields` (flat unroll, `observation/NAME` a `frames.PackedStack` or `[T+1, H, W, S*k]`
    stacks) with each stacked observation NAME -> k replaced by its packed parts, in place of
    the field."""
    out: Dict[str, np.ndarray] = {}
    for name, value in fields.items():
        if _observation(name) not in stacked:
            out[name] = value
            continue
        k = stacked[_observation(name)]
        if not isinstance(value, PackedStack):
            _split(value.shape, k)
            value = frames.pack_stacks(np.asarray(value), k)
        out[f"{name}/newest"] = value.newest
        out[f"{name}/first"] = frames.channels_of(value.first)
        out[f"{name}/restart"] = value.restart
        out[f"{name}/restarted"] = value.restarted
    return out


def unpacked(fields: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """`fields` with each `frames.PackedStack` as its whole stacks (the wire format of an
    actor that does not pack)."""
    return {name: np.asarray(value) if isinstance(value, PackedStack) else value
            for name, value in fields.items()}


def packed_names(wire_spec: Mapping[str, Tuple[np.dtype, tuple]],
                 stacked: Mapping[str, int], continued: bool = False) -> list:
    """The field names of a packed unroll (`continued`: one that leaves `first` out)."""
    names = []
    for name in wire_spec:
        if _observation(name) in stacked:
            names += [f"{name}/{part}" for part in (CONTINUED_PARTS if continued else PARTS)]
        else:
            names.append(name)
    return names


class StreamedUnroll(NamedTuple):
    """One environment's unroll, encoded both ways: `whole` carries step 0's older frames,
    `continued` (None where there is nothing to leave out) relies on the stream having
    carried this environment's previous unroll. The client picks per stream."""

    env: int
    whole: bytes
    continued: Optional[bytes]


def encode_streamed(fields: Mapping[str, np.ndarray], stacked: Mapping[str, int], meta: dict,
                    env: int) -> StreamedUnroll:
    """`fields` (a flat unroll of environment `env` of its actor) packed and encoded whole
    and continued, `env` added to the meta."""
    packed = pack(fields, stacked)
    meta = dict(meta, env=int(env))
    whole = codec.encode(codec.UNROLL_MAGIC, packed, meta)
    firsts = [f"observation/{name}/first" for name in stacked]
    if not any(name in packed for name in firsts):
        return StreamedUnroll(int(env), whole, None)
    continued = {name: value for name, value in packed.items() if name not in firsts}
    return StreamedUnroll(int(env), whole, codec.encode(codec.UNROLL_MAGIC, continued, meta))


class StreamFrames:
    """Per stream: the frames of each environment's last accepted stack, per stacked
    observation, keyed by the `env` in its unrolls' meta (`env_id` admits [0, num_envs):
    at most num_envs stacks of H*W*S*k bytes a stream)."""

    def __init__(self):
        self._last: Dict[int, Tuple[int, Dict[str, np.ndarray]]] = {}

    def previous(self, env: int, actor_id: int) -> Dict[str, np.ndarray]:
        """`name -> [S, H, W, k]` frames of `env`'s last stack, or `CodecError` if this stream
        has not carried its whole unroll (or another actor's)."""
        held = self._last.get(env)
        if held is None or held[0] != actor_id:
            raise codec.CodecError(
                f"a continued unroll of env {env} (no step-0 'first' frames) on a stream that "
                "has not carried that environment's whole unroll: each environment's first "
                "unroll on a stream must be whole")
        return held[1]

    def remember(self, env: int, actor_id: int, stacks: Dict[str, np.ndarray]) -> None:
        self._last[env] = (actor_id, stacks)


def env_id(meta: Mapping, max_envs: int) -> Optional[int]:
    """The meta's `env` (None if absent), or `CodecError` unless it is an int in
    [0, max_envs)."""
    env = meta.get("env")
    if env is None:
        return None
    if not isinstance(env, int) or isinstance(env, bool) or not 0 <= env < max_envs:
        raise codec.CodecError(f"meta 'env' must be an int in [0, {max_envs}) (Actor.num_envs "
                               f"of this run), got {str(env)[:40]}")
    return env


class Unpacker:
    """`unpack` for one wire spec and set of stacked observations, its names worked out
    once (the learner's validator calls it for every unroll)."""

    def __init__(self, wire_spec: Mapping[str, Tuple[np.dtype, tuple]],
                 stacked: Mapping[str, int]):
        self.wire_spec, self.stacked = dict(wire_spec), dict(stacked)
        self.whole_names = packed_names(wire_spec, stacked)
        self.continued_names = packed_names(wire_spec, stacked, continued=True)
        self._plan = []  # (name, dtype, shape, k, channels) of each stacked field; or name
        for name, (dtype, shape) in self.wire_spec.items():
            if _observation(name) in stacked:
                channels, k = _split(shape, stacked[_observation(name)])
                self._plan.append((name, np.dtype(dtype), tuple(shape), k, channels))
            else:
                self._plan.append(name)

    def __call__(self, fields: Mapping[str, np.ndarray],
                 previous: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, object]:
        names = list(fields)
        continued = names == self.continued_names
        if not continued and names != self.whole_names:
            missing = sorted(set(self.whole_names) - set(fields))
            extra = sorted(set(fields) - set(self.whole_names))
            raise codec.CodecError(f"packed field names differ from the spec: missing "
                                   f"{missing}, unexpected {extra}" if missing or extra
                                   else "packed fields are out of the spec's order")
        if continued and previous is None:
            raise codec.CodecError("a continued unroll (no step-0 'first' frames) needs meta "
                                   "'env' and a stream that carried that environment's whole "
                                   "unroll")
        out: Dict[str, object] = {}
        for entry in self._plan:
            if isinstance(entry, str):
                out[entry] = fields[entry]
                continue
            name, dtype, shape, k, channels = entry
            out[name] = _unpack_stack(fields, name, dtype, shape, k, channels,
                                      previous[name] if continued else None)
        return out


def _unpack_stack(fields, name, dtype, shape, k, channels, last) -> PackedStack:
    """One stacked field's `PackedStack`, its parts checked; `last`: the frames of the
    stream's last stack, for a continued unroll (None: whole)."""
    steps, frame = shape[0], shape[1:-1]
    newest, restart = fields[f"{name}/newest"], fields[f"{name}/restart"]
    restarted = fields[f"{name}/restarted"]
    for part, array, want_dtype, want_shape in (
            ("newest", newest, dtype, (steps,) + frame + (k,)),
            ("restart", restart, np.dtype(np.bool_), (steps,))):
        if array.dtype != want_dtype or array.shape != want_shape:
            raise codec.CodecError(f"field '{name}/{part}': {array.dtype}{list(array.shape)}"
                                   f" != expected {np.dtype(want_dtype)}{list(want_shape)}")
    if last is not None:
        if last[-1].tobytes() != newest[0].tobytes():
            raise codec.CodecError(f"field '{name}/newest': step 0 is not the newest frame of "
                                   "the last stack this stream carried for its env")
        first = last[:-1]
    else:
        first = fields[f"{name}/first"]
        if first.dtype != dtype or first.shape != frame + (channels - k,):
            raise codec.CodecError(f"field '{name}/first': {first.dtype}{list(first.shape)}"
                                   f" != expected {np.dtype(dtype)}"
                                   f"{list(frame + (channels - k,))}")
        first = frames.frames_of(first, k)
    flags = restart.view(np.uint8)
    if flags.max() > 1 or flags[0]:
        raise codec.CodecError(f"field '{name}/restart': booleans other than 0 and 1, or a "
                               "restart at step 0")
    count = int(flags.sum())
    if restarted.dtype != dtype or restarted.shape != (count,) + frame + (channels - k,):
        raise codec.CodecError(f"field '{name}/restarted': {restarted.dtype}"
                               f"{list(restarted.shape)} != expected {np.dtype(dtype)}"
                               f"{[count, *frame, channels - k]} ({count} restarts)")
    return PackedStack(shape, dtype, k, newest, first, restart, restarted)


def unpack(fields: Mapping[str, np.ndarray], wire_spec: Mapping[str, Tuple[np.dtype, tuple]],
           stacked: Mapping[str, int],
           previous: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, object]:
    """The flat unroll `wire_spec` describes, each stacked observation a `PackedStack`, from
    packed `fields`; a continued unroll (no `first`) takes step 0's older frames from
    `previous` (`name -> [S, H, W, k]`, the stream's last stack; see `StreamFrames`).
    `CodecError` for a packed field of the wrong name, dtype or shape, restarts that do not
    add up, or a continued unroll that does not continue `previous`."""
    return Unpacker(wire_spec, stacked)(fields, previous)
