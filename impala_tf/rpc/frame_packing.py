"""Each frame crosses the wire once: stacked observations packed by the actor, rebuilt by
the learner.

An Atari observation stacks the last S frames, `[T+1, H, W, S*k]` per unroll with k channels
a frame (1 grey, 3 RGB), oldest first; step t's stack is step t-1's shifted by one frame,
except where the environment restarted the stack (a game reset). `pack` replaces the field
`observation/NAME` by

  observation/NAME/newest     [T+1, H, W, k]          each step's newest frame
  observation/NAME/first      [H, W, (S-1)*k]         the older frames of step 0
  observation/NAME/restart    [T+1] bool              step t's stack is not step t-1's shifted
  observation/NAME/restarted  [R, H, W, (S-1)*k]      the older frames of those R steps

(R varies per unroll, at most T), and `unpack` rebuilds `[T+1, H, W, S*k]` exactly: the
actor decides per step from the pixels themselves, so episode starts, life losses and
resets need no rule. `unpack` checks every packed field before it uses it and raises
`codec.CodecError` for anything malformed. A T=20 Pong unroll shrinks from 21 stacks
(592,704 bytes of frames) to 24 frames (169,344 bytes) when no reset falls inside it.
"""

from typing import Dict, Mapping, Tuple

import numpy as np

from impala_tf.rpc import codec

PARTS = ("newest", "first", "restart", "restarted")


def _split(stack_shape: Tuple[int, ...], k: int) -> Tuple[int, int]:
    channels = stack_shape[-1]
    if k <= 0 or channels % k or channels // k < 2:
        raise ValueError(f"cannot unstack {channels} channels in frames of {k}")
    return channels, k


def pack(fields: Mapping[str, np.ndarray], stacked: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """`fields` (flat unroll, `observation/NAME` as `[T+1, H, W, S*k]`) with each stacked
    observation NAME -> k replaced by its packed parts, in place of the field."""
    out: Dict[str, np.ndarray] = {}
    for name, value in fields.items():
        observation = name[len("observation/"):] if name.startswith("observation/") else None
        if observation not in stacked:
            out[name] = value
            continue
        _, k = _split(value.shape, stacked[observation])
        older, newer = value[1:, ..., :-k], value[:-1, ..., k:]  # step t's vs t-1's shifted
        restart = np.zeros(value.shape[0], bool)
        restart[1:] = (older != newer).reshape(value.shape[0] - 1, -1).any(axis=1)
        out[f"{name}/newest"] = np.ascontiguousarray(value[..., -k:])
        out[f"{name}/first"] = np.ascontiguousarray(value[0, ..., :-k])
        out[f"{name}/restart"] = restart
        out[f"{name}/restarted"] = np.ascontiguousarray(value[restart][..., :-k])
    return out


def packed_names(wire_spec: Mapping[str, Tuple[np.dtype, tuple]],
                 stacked: Mapping[str, int]) -> list:
    """The field names of a packed unroll, in order."""
    names = []
    for name in wire_spec:
        if name.startswith("observation/") and name[len("observation/"):] in stacked:
            names += [f"{name}/{part}" for part in PARTS]
        else:
            names.append(name)
    return names


def unpack(fields: Mapping[str, np.ndarray], wire_spec: Mapping[str, Tuple[np.dtype, tuple]],
           stacked: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """The flat unroll `wire_spec` describes, rebuilt from packed `fields`; `CodecError`
    for a packed field of the wrong name, dtype or shape, or restarts that do not add up."""
    expected = packed_names(wire_spec, stacked)
    if list(fields) != expected:
        missing = sorted(set(expected) - set(fields))
        extra = sorted(set(fields) - set(expected))
        raise codec.CodecError(f"packed field names differ from the spec: missing {missing}, "
                               f"unexpected {extra}" if missing or extra
                               else "packed fields are out of the spec's order")
    out: Dict[str, np.ndarray] = {}
    for name, (dtype, shape) in wire_spec.items():
        observation = name[len("observation/"):] if name.startswith("observation/") else None
        if observation not in stacked:
            out[name] = fields[name]
            continue
        channels, k = _split(shape, stacked[observation])
        steps, frame = shape[0], tuple(shape[1:-1])
        newest, first = fields[f"{name}/newest"], fields[f"{name}/first"]
        restart, restarted = fields[f"{name}/restart"], fields[f"{name}/restarted"]
        for part, array, want_dtype, want_shape in (
                ("newest", newest, dtype, (steps,) + frame + (k,)),
                ("first", first, dtype, frame + (channels - k,)),
                ("restart", restart, np.dtype(np.bool_), (steps,))):
            if array.dtype != want_dtype or tuple(array.shape) != want_shape:
                raise codec.CodecError(f"field '{name}/{part}': {array.dtype}{list(array.shape)}"
                                       f" != expected {np.dtype(want_dtype)}{list(want_shape)}")
        if (restart.view(np.uint8) > 1).any() or restart[0]:
            raise codec.CodecError(f"field '{name}/restart': booleans other than 0 and 1, or "
                                   "a restart at step 0")
        count = int(restart.sum())
        if (restarted.dtype != dtype
                or tuple(restarted.shape) != (count,) + frame + (channels - k,)):
            raise codec.CodecError(f"field '{name}/restarted': {restarted.dtype}"
                                   f"{list(restarted.shape)} != expected {np.dtype(dtype)}"
                                   f"{[count, *frame, channels - k]} ({count} restarts)")
        stack = np.empty(shape, dtype)
        stack[0, ..., :-k] = first
        stack[..., -k:] = newest
        rows = iter(restarted)
        for t in range(1, steps):
            stack[t, ..., :-k] = next(rows) if restart[t] else stack[t - 1, ..., k:]
        out[name] = stack
    return out
