"""Each frame crosses the wire once: stacked observations packed by the actor, rebuilt by
the learner straight into its batch.

An Atari observation stacks the last S frames, `[T+1, H, W, S*k]` per unroll with k channels
a frame (1 grey, 3 RGB), oldest first; step t's stack is step t-1's shifted by one frame,
except where the environment restarted the stack (a game reset). `pack` replaces the field
`observation/NAME` by

  observation/NAME/newest     [T+1, H, W, k]          each step's newest frame
  observation/NAME/first      [H, W, (S-1)*k]         the older frames of step 0
  observation/NAME/restart    [T+1] bool              step t's stack is not step t-1's shifted
  observation/NAME/restarted  [R, H, W, (S-1)*k]      the older frames of those R steps

(R varies per unroll, at most T): the actor decides per step from the pixels themselves, so
episode starts, life losses and resets need no rule.

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
anything malformed. It builds no stacks: each becomes a `PackedStack`, which the batcher
writes straight into its batch: as stacks (`write_into`, one pass over the stacked bytes),
or each frame once with the places of each stack's frames (`write_timeline_into`), for the
learner's accelerator to gather.
"""

from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from impala_tf.rpc import codec
from impala_tf.stack_words import stack_into, word_view

PARTS = ("newest", "first", "restart", "restarted")
# What an unroll of a stream leaves out once the stream holds its environment's last stack.
CONTINUED_PARTS = ("newest", "restart", "restarted")


def _split(stack_shape: Tuple[int, ...], k: int) -> Tuple[int, int]:
    channels = stack_shape[-1]
    if k <= 0 or channels % k or channels // k < 2:
        raise ValueError(f"cannot unstack {channels} channels in frames of {k}")
    return channels, k


def _observation(name: str) -> Optional[str]:
    return name[len("observation/"):] if name.startswith("observation/") else None


def pack(fields: Mapping[str, np.ndarray], stacked: Mapping[str, int]) -> Dict[str, np.ndarray]:
    """`fields` (flat unroll, `observation/NAME` as `[T+1, H, W, S*k]`) with each stacked
    observation NAME -> k replaced by its packed parts, in place of the field."""
    out: Dict[str, np.ndarray] = {}
    for name, value in fields.items():
        if _observation(name) not in stacked:
            out[name] = value
            continue
        channels, k = _split(value.shape, stacked[_observation(name)])
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


def _frames(older: np.ndarray, k: int) -> np.ndarray:
    """`[H, W, n*k]` channels -> `[n, H, W, k]` frames, oldest first (a view)."""
    h, w, c = older.shape
    return older.reshape(h, w, c // k, k).transpose(2, 0, 1, 3)


def frame_major(stacks: np.ndarray, k: int) -> np.ndarray:
    """Stacks `[T+1, H, W, S*k]` as a `[T+1, S, H, W, k]` view of the same memory: slot j of
    step t is frame j of its stack."""
    return np.moveaxis(stacks.reshape(stacks.shape[:-1] + (stacks.shape[-1] // k, k)), -2, 1)


class PackedStack:
    """A stacked observation as it came, `[T+1, H, W, S*k]` once written out: `write_into`
    writes it into an array (a slot of a batch), `np.asarray` builds it. `first`: step 0's
    older frames, `[S-1, H, W, k]`; the other parts as on the wire."""

    def __init__(self, shape, dtype, k, newest, first, restart, restarted):
        self.shape, self.dtype, self.k = tuple(shape), np.dtype(dtype), int(k)
        self.newest, self.first, self.restart, self.restarted = newest, first, restart, restarted
        self.ndim = len(self.shape)

    @property
    def depth(self) -> int:
        return self.shape[-1] // self.k

    def _segments(self):
        """(start, end, older frames [S-1, H, W, k]) of each run of shifted stacks."""
        steps = self.shape[0]
        starts = [0] + [int(t) for t in np.flatnonzero(self.restart)]
        olders = [self.first] + [_frames(older, self.k) for older in self.restarted]
        yield from zip(starts, starts[1:] + [steps], olders)

    def write_into(self, out: np.ndarray) -> None:
        """Writes the stacks into `out` (`shape`, any strides): grey uint8 stacks of 2, 4 or
        8 frames as whole words (`stack_words`); else one strided copy of a run of frames
        for each of the S slots of a stack."""
        depth, k = self.depth, self.k
        words = word_view(out) if k == 1 else None
        if words is not None:
            for start, end, older in self._segments():
                wide = np.concatenate([older[..., 0], self.newest[start:end, ..., 0]],
                                      dtype=words.dtype)  # widened as it is gathered
                n = end - start
                stack_into(words[start:end], [wide[j:j + n] for j in range(depth)])
            return
        self.write_frames_into(frame_major(out, k))

    def write_frames_into(self, out: np.ndarray) -> None:
        """Writes the stacks frame-major into `out` `[T+1, S, H, W, k]` (any strides): slot j
        of step t is frame j of its stack."""
        depth = self.depth
        for start, end, older in self._segments():
            n = end - start
            for j in range(depth):
                # Slot j of step start+i holds timeline frame j+i (older frames, then newest).
                from_older = max(0, min(n, depth - 1 - j))
                if from_older:
                    out[start:start + from_older, j] = older[j:j + from_older]
                if n > from_older:
                    first_newest = start + j + from_older - (depth - 1)
                    out[start + from_older:end, j] = self.newest[
                        first_newest:first_newest + n - from_older]

    def write_timeline_into(self, timeline: np.ndarray, index: np.ndarray) -> None:
        """Writes each frame once into `timeline` `[S(T+1), H, W, k]` (any strides; only the
        places used) and the places of each step's S frames into `index` `[T+1, S]`: one
        unroll of `specs.PackedFrames`."""
        depth, steps = self.depth, self.shape[0]
        timeline[:depth - 1] = self.first
        timeline[depth - 1:depth - 1 + steps] = self.newest
        slots = np.arange(depth)
        index[...] = np.arange(steps)[:, None] + slots  # newest of t at S-1+t: t + j
        restarts = np.flatnonzero(self.restart)
        for r, (start, older) in enumerate(zip(restarts, self.restarted)):
            place = depth - 1 + steps + r * (depth - 1)
            timeline[place:place + depth - 1] = _frames(older, self.k)
            rows = np.arange(start, min(start + depth - 1, steps))
            into = rows - start  # steps into the restarted stack
            reads_older = slots[None, :] < (depth - 1 - into)[:, None]
            index[rows] = np.where(reads_older, place + into[:, None] + slots, index[rows])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        self.write_into(out)
        return out if dtype is None else out.astype(dtype)

    def last_frames(self) -> np.ndarray:
        """The frames of step T's stack, `[S, H, W, k]` oldest first, a copy (what the next
        unroll of the stream starts from)."""
        restarts = np.flatnonzero(self.restart)
        start = int(restarts[-1]) if len(restarts) else 0
        older = _frames(self.restarted[-1], self.k) if len(restarts) else self.first
        newest = self.newest[max(start, self.shape[0] - self.depth):]  # [m, H, W, k], m <= S
        return np.concatenate([older[len(older) - (self.depth - len(newest)):], newest])


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
        first = _frames(first, k)
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
