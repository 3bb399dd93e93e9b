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
(592,704 bytes of frames) to 24 frames (169,344 bytes) when no reset falls inside it; on
our machine packing costs the actor about 0.3 ms an unroll and rebuilding costs the learner
about 0.2 ms (grey frames: a pixel's 4 stacked bytes are built as one 32-bit word).
"""

import sys
from typing import Dict, Mapping, Tuple

import numpy as np

from impala_tf.rpc import codec

PARTS = ("newest", "first", "restart", "restarted")
_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # bytes of one pixel's stack -> a word
_LITTLE = sys.byteorder == "little"


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
        channels, k = _split(value.shape, stacked[observation])
        # Frames first ([T+1, S, H, W, k], one copy), so that step t's older frames and step
        # t-1's newer ones compare as contiguous blocks.
        steps = value.shape[0]
        frames = np.ascontiguousarray(np.moveaxis(
            value.reshape(value.shape[:-1] + (channels // k, k)), -2, 1))
        restart = np.zeros(steps, bool)
        restart[1:] = (frames[1:, :-1] != frames[:-1, 1:]).reshape(steps - 1, -1).any(axis=1)
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
        out[name] = _rebuild(shape, dtype, k, newest, first, restart, restarted)
    return out


def _frames(older: np.ndarray, k: int) -> np.ndarray:
    """[H, W, n*k] channels -> [n, H, W, k] frames, oldest first."""
    h, w, c = older.shape
    return older.reshape(h, w, c // k, k).transpose(2, 0, 1, 3)


def _rebuild(shape, dtype, k, newest, first, restart, restarted) -> np.ndarray:
    """The stacks: each segment (from step 0, and from each restart) is a timeline of
    frames, its older frames then each step's newest, read through a window of S frames."""
    steps, depth = shape[0], shape[-1] // k
    stack = np.empty(shape, dtype)
    starts = [0] + [int(t) for t in np.flatnonzero(restart)]
    for start, end, older in zip(starts, starts[1:] + [steps], [first, *restarted]):
        timeline = np.concatenate([_frames(older, k), newest[start:end]])  # [S-1+n, H, W, k]
        words = _WORDS.get(depth * k * np.dtype(dtype).itemsize)
        if words is not None and np.dtype(dtype).itemsize == 1 and k == 1 and _LITTLE:
            # A pixel's S one-byte channels are one S-byte word: build the words with
            # contiguous shifts and ors, then view them as bytes (oldest in the lowest).
            n = end - start
            packed = np.zeros((n,) + tuple(shape[1:-1]), words)
            for j in range(depth):
                packed |= timeline[j:j + n, ..., 0].astype(words) << words(8 * j)
            stack[start:end] = packed.view(dtype).reshape((n,) + tuple(shape[1:]))
            continue
        windows = np.lib.stride_tricks.sliding_window_view(timeline, depth, axis=0)
        target = stack[start:end].reshape((end - start,) + tuple(shape[1:-1]) + (depth, k))
        target[...] = windows.swapaxes(-1, -2)  # one copy: [n, H, W, k, S] -> [n, H, W, S, k]
    return stack
