"""Frame stacks, each frame once: the one module that stacks, unstacks and continues the
S-frame stacks of a stacked observation (`BatchedEnv.stacked_observations`), free of
TensorFlow.

A stacked observation holds the last S frames of k channels each, `[..., H, W, S*k]`,
oldest first; step t's stack is step t-1's shifted by one frame, except where the
environment restarted it (a reset, a new episode). So a run of steps is carried as

  newest     [T+1, H, W, k]        each step's newest frame
  first      [S-1, H, W, k]        the older frames of step 0
  restart    [T+1] bool            step t's stack is not step t-1's shifted (never step 0)
  restarted  [R, H, W, (S-1)*k]    the older frames of those R steps

(`PackedStack`), whichever side of the wire built it: the actor from its environment's
stacks (`UnrollBuilder`, deciding each step from the pixels, so episode starts, life losses
and resets need no rule), central inference from the steps its actors sent, the learner's
validator from an unroll message. The batcher writes a `PackedStack` into its batch as
stacks (a learner on CPU) or each frame once with the places of each stack's frames, for the
learner's accelerator to gather (`device_frames.PackedFrames`).

Grey uint8 stacks of 2, 4 or 8 frames are stacked, shifted and compared as whole words (a
pixel's S frames are one S-byte word: the newest frame in the highest byte), which numpy
does 4 to 8 times faster than the strided bytes.
"""

import sys
from typing import Optional, Sequence, Tuple

import numpy as np

_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # bytes of one pixel's stack -> a word


# -- stacks as words ------------------------------------------------------------------------

def word_view(out: np.ndarray) -> Optional[np.ndarray]:
    """`out` `[..., S]` uint8 (any strides, S in 2, 4, 8) as `[...]` words, or None where
    the words cannot be used (another dtype or depth, a big-endian machine, channels not
    contiguous or words not aligned)."""
    words = _WORDS.get(out.shape[-1]) if out.dtype == np.uint8 else None
    if words is None or sys.byteorder != "little" or out.strides[-1] != 1:
        return None
    size = np.dtype(words).itemsize
    if out.ctypes.data % size or any(stride % size for stride in out.strides[:-1]):
        return None
    return out.view(words)[..., 0]


def stack_into(words: np.ndarray, frames: Sequence[np.ndarray]) -> None:
    """Writes the S `frames` (oldest first, each shaped like `words`, uint8 or wider) into
    `words` (`word_view` of the stacks)."""
    words[...] = frames[-1]
    for frame in frames[-2::-1]:
        words <<= words.dtype.type(8)
        words |= frame


def stack_continues(stacks: np.ndarray, last: np.ndarray, channels: int) -> np.ndarray:
    """`[K]` bool: whether each of `stacks` `[K, ..., S*k]` continues `last` (same shape) by
    one frame of `channels`: its older channels equal `last`'s newer ones."""
    new, old = word_view(stacks), word_view(last)
    if channels == 1 and new is not None and old is not None:
        word = new.dtype.type
        same = (new & word((1 << 8 * (stacks.shape[-1] - 1)) - 1)) == (old >> word(8))
    else:
        same = stacks[..., :-channels] == last[..., channels:]
    return same.reshape(len(stacks), -1).all(axis=1)


def shift_into(out: np.ndarray, last: np.ndarray, newest: np.ndarray, channels: int) -> None:
    """`out` `[K, ..., S*k]` = each of `last`'s stacks continued by its `newest` frame
    `[K, ..., channels]`: `last`'s newer channels, then the newest."""
    words, old = word_view(out), word_view(last)
    if channels == 1 and words is not None and old is not None:
        np.right_shift(old, words.dtype.type(8), out=words)
    else:
        out[..., :-channels] = last[..., channels:]
    out[..., -channels:] = newest


# -- layouts --------------------------------------------------------------------------------

def stack_depth(channels: int, k: int) -> int:
    """S, the frames in a stack of `channels` with `k` channels a frame; ValueError unless
    whole frames, at least 2."""
    if k <= 0 or channels % k or channels // k < 2:
        raise ValueError(f"cannot unstack {channels} channels in frames of {k}")
    return channels // k


def frames_of(older: np.ndarray, k: int) -> np.ndarray:
    """`[H, W, n*k]` channels -> `[n, H, W, k]` frames, oldest first (a view)."""
    h, w, c = older.shape
    return older.reshape(h, w, c // k, k).transpose(2, 0, 1, 3)


def channels_of(frames: np.ndarray) -> np.ndarray:
    """`[n, H, W, k]` frames -> `[H, W, n*k]` channels, oldest first (a copy)."""
    n, h, w, k = frames.shape
    return np.ascontiguousarray(frames.transpose(1, 2, 0, 3)).reshape(h, w, n * k)


def frame_major(stacks: np.ndarray, k: int) -> np.ndarray:
    """Stacks `[T+1, H, W, S*k]` as a `[T+1, S, H, W, k]` view of the same memory: slot j of
    step t is frame j of its stack."""
    return np.moveaxis(stacks.reshape(stacks.shape[:-1] + (stacks.shape[-1] // k, k)), -2, 1)


# -- a run of steps, each frame once --------------------------------------------------------

class PackedStack:
    """One unroll's stacked observation, each frame once (module docstring): `shape` is the
    stacks' `[T+1, H, W, S*k]`. `write_into` writes the stacks into an array (a slot of a
    batch), `write_timeline_into` each frame once, `np.asarray` builds the stacks."""

    def __init__(self, shape, dtype, k, newest, first, restart, restarted):
        self.shape, self.dtype, self.k = tuple(shape), np.dtype(dtype), int(k)
        self.newest, self.first, self.restart, self.restarted = newest, first, restart, restarted
        self.ndim = len(self.shape)

    @property
    def depth(self) -> int:
        return self.shape[-1] // self.k

    @property
    def nbytes(self) -> int:
        """The bytes of its frames (what a batch holds of it with frames on the device)."""
        return self.newest.nbytes + self.first.nbytes + self.restarted.nbytes

    def _segments(self):
        """(start, end, older frames [S-1, H, W, k]) of each run of shifted stacks."""
        steps = self.shape[0]
        starts = [0] + [int(t) for t in np.flatnonzero(self.restart)]
        olders = [self.first] + [frames_of(older, self.k) for older in self.restarted]
        yield from zip(starts, starts[1:] + [steps], olders)

    def write_into(self, out: np.ndarray) -> None:
        """Writes the stacks into `out` (`shape`, any strides): grey uint8 stacks of 2, 4 or
        8 frames as whole words; else one strided copy of a run of frames for each of the S
        slots of a stack."""
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
        unroll of `device_frames.PackedFrames`."""
        depth, steps = self.depth, self.shape[0]
        timeline[:depth - 1] = self.first
        timeline[depth - 1:depth - 1 + steps] = self.newest
        slots = np.arange(depth)
        index[...] = np.arange(steps)[:, None] + slots  # newest of t at S-1+t: t + j
        restarts = np.flatnonzero(self.restart)
        for r, (start, older) in enumerate(zip(restarts, self.restarted)):
            place = depth - 1 + steps + r * (depth - 1)
            timeline[place:place + depth - 1] = frames_of(older, self.k)
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
        older = frames_of(self.restarted[-1], self.k) if len(restarts) else self.first
        newest = self.newest[max(start, self.shape[0] - self.depth):]  # [m, H, W, k], m <= S
        return np.concatenate([older[len(older) - (self.depth - len(newest)):], newest])


def pack_stacks(stacks: np.ndarray, k: int,
                restart: Optional[np.ndarray] = None) -> PackedStack:
    """`stacks` `[T+1, H, W, S*k]` as a `PackedStack` (its parts copied out). `restart`
    `[T+1]` bool: where the stacks restart, if known (central inference's steps say); else
    decided from the pixels: step t restarts unless its older frames are step t-1's newer."""
    steps, channels = stacks.shape[0], stacks.shape[-1]
    stack_depth(channels, k)
    if restart is None:
        restart = np.zeros(steps, bool)
        restart[1:] = ~stack_continues(stacks[1:], stacks[:-1], k)
    else:
        restart = np.array(restart, bool)
        restart[0] = False
    return PackedStack(stacks.shape, stacks.dtype, k,
                       np.ascontiguousarray(stacks[..., -k:]),
                       np.ascontiguousarray(frames_of(stacks[0, ..., :-k], k)), restart,
                       np.ascontiguousarray(stacks[restart][..., :-k]))


# -- the step-by-step stream of K environments ---------------------------------------------

class StepStacks:
    """Stacks of K environments carried step by step, each frame once: the sending side
    `split`s each step's stacks into its newest frames, which stacks restart and their older
    frames; the receiving side `join`s those back into the stacks, continuing its last ones.
    One per stream and stacked observation; a new stream restarts every stack.

    Args:
      k: channels per frame.
    """

    def __init__(self, k: int):
        self.k = int(k)
        self.last: Optional[np.ndarray] = None  # the last step's stacks [K, H, W, S*k]

    def split(self, stacks: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(newest `[K, H, W, k]`, restart `[K]` bool, older `[R, H, W, (S-1)*k]` of the R
        restarted) of `stacks` `[K, H, W, S*k]`, a copy kept as the last."""
        k = self.k
        restart = (np.ones(len(stacks), bool) if self.last is None
                   else ~stack_continues(stacks, self.last, k))
        self.last = np.array(stacks)  # the environment may reuse its buffer
        return stacks[..., -k:], restart, stacks[restart][..., :-k]

    def join(self, newest: np.ndarray, restart: np.ndarray, older: Optional[np.ndarray],
             shape: Tuple[int, ...], dtype) -> np.ndarray:
        """The stacks `shape` `[K, H, W, S*k]` that `split` took apart (a fresh array, kept as
        the last); `older` may be None when nothing restarts. ValueError for a first step
        that does not restart every stack."""
        k = self.k
        if self.last is None and not restart.all():
            raise ValueError("a stream's first step must restart every stack")
        stacks = np.empty(shape, dtype)
        if self.last is not None:  # every stack continued; the restarted ones then replaced
            shift_into(stacks, self.last, newest, k)
        else:
            stacks[..., -k:] = newest
        if restart.any():
            stacks[restart, ..., :-k] = older
        self.last = stacks
        return stacks

