"""frames: stacking, unstacking and continuing frame stacks, each against plain numpy (the
word fast paths against numpy's transpose and channel slices, into contiguous arrays and
strided slots of a batch), for grey frames and for 3-channel ones."""

import numpy as np
import pytest

from impala_tf import frames
from impala_tf.learning.batcher import aligned_empty
from frame_stacks import stacks as _stacks


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_words_equal_the_transpose(depth):
    planes = np.random.default_rng(depth).integers(0, 256, (depth, 3, 7, 5), dtype=np.uint8)
    expected = np.moveaxis(planes, 0, -1)
    out = np.empty(expected.shape, np.uint8)
    frames.stack_into(frames.word_view(out), list(planes))
    np.testing.assert_array_equal(out, expected)
    batch = np.zeros((3, 4, 7, 5, depth), np.uint8)  # slot 2 of a batch: strided, aligned
    frames.stack_into(frames.word_view(batch[:, 2]), list(planes))
    np.testing.assert_array_equal(batch[:, 2], expected)
    assert not batch[:, [0, 1, 3]].any()


def test_layouts_words_cannot_serve_are_declined():
    assert frames.word_view(np.empty((4, 5, 3), np.uint8)) is None  # 3 frames: no 3-byte word
    assert frames.word_view(np.empty((4, 5, 4), np.int32)) is None
    assert frames.word_view(np.empty((4, 4, 5), np.uint8).transpose(0, 2, 1)) is None  # strided
    assert frames.word_view(np.empty(4 * 5 * 4 + 1, np.uint8)[1:].reshape(4, 5, 4)) is None
    # Each one way to fail, the others met (a 64-byte aligned buffer; strides all multiples
    # of the word but the one named):
    buffer = aligned_empty((4096,), np.uint8)
    assert frames.word_view(buffer[:64].reshape(4, 16)) is None  # 16 frames: no such word
    assert frames.word_view(buffer[:80].view(np.int8).reshape(4, 5, 4)) is None  # not uint8
    assert frames.word_view(buffer[:320].reshape(4, 10, 8)[..., ::2]) is None  # channel stride 2
    assert frames.word_view(buffer[:40].reshape(2, 4, 5)[..., :4]) is None  # row stride 5


@pytest.mark.parametrize("depth, channels, aligned", [
    (4, 1, True), (8, 1, True), (2, 1, True), (4, 1, False), (12, 3, True), (4, 2, True)])
def test_continuing_stacks_as_words_equals_channel_slices(depth, channels, aligned):
    rng = np.random.default_rng(depth + channels)
    last = rng.integers(0, 256, (5, 6, 7, depth), dtype=np.uint8)
    newest = rng.integers(0, 256, (5, 6, 7, channels), dtype=np.uint8)
    expected = np.concatenate([last[..., channels:], newest], axis=-1)
    buffer = np.empty(expected.size + 1, np.uint8)  # unaligned: the slices' path
    out = (np.empty(expected.shape, np.uint8) if aligned
           else buffer[1:].reshape(expected.shape))
    frames.shift_into(out, last, newest, channels)
    np.testing.assert_array_equal(out, expected)
    changed = expected.copy()
    changed[1, 2, 3, 0] ^= 1  # the oldest channel: another stack
    changed[3, 0, 0, -1] ^= 1  # the newest channel: still a continuation
    if depth > channels + 1:
        changed[4, 5, 6, depth - channels - 1] ^= 1  # the last older channel
    continues = frames.stack_continues(changed, last, channels)
    np.testing.assert_array_equal(
        continues, (changed[..., :-channels] == last[..., channels:]).reshape(5, -1).all(1))
    assert continues[0] and continues[2] and continues[3] and not continues[1]


# Unrolls shorter than a stack (T+1 <= S: the last stack still holds frames of the first).
@pytest.mark.parametrize("k, restarts, steps", [
    (1, (7, 15), 21), (1, (), 21), (1, (1, 2, 3, 20), 21), (3, (9,), 21), (1, (), 3),
    (2, (2,), 4)])
def test_a_packed_stack_holds_each_frame_once_and_rebuilds_every_stack(k, restarts, steps):
    stacks = _stacks(np.random.default_rng(k), steps=steps, k=k, restarts=restarts)
    depth, steps = stacks.shape[-1] // k, stacks.shape[0]
    packed = frames.pack_stacks(stacks, k)
    assert np.flatnonzero(packed.restart).tolist() == list(restarts)  # found from the pixels
    told = frames.pack_stacks(stacks, k, restart=np.isin(np.arange(steps), restarts))
    np.testing.assert_array_equal(told.restart, packed.restart)
    # Step 0 carries its older frames whatever it is told (a stream's first step restarts).
    everywhere = frames.pack_stacks(stacks, k, restart=np.ones(steps, bool))
    assert not everywhere.restart[0] and everywhere.restart[1:].all()
    for each in (packed, told, everywhere):
        np.testing.assert_array_equal(np.asarray(each), stacks)
        assert np.asarray(each).dtype == stacks.dtype and each.shape == stacks.shape
        as_float = np.asarray(each, dtype=np.float32)
        assert as_float.dtype == np.float32
        np.testing.assert_array_equal(as_float, stacks.astype(np.float32))
    assert packed.nbytes == (steps + (depth - 1) * (1 + len(restarts))) * stacks[0, ..., :k].nbytes
    by_frame = np.empty((steps, depth) + stacks.shape[1:-1] + (k,), stacks.dtype)
    packed.write_frames_into(by_frame)
    for t in range(steps):
        for j in range(depth):
            np.testing.assert_array_equal(by_frame[t, j], stacks[t, ..., j * k:(j + 1) * k])
    timeline = np.zeros((depth * steps,) + stacks.shape[1:-1] + (k,), stacks.dtype)
    index = np.zeros((steps, depth), np.int32)
    packed.write_timeline_into(timeline, index)
    np.testing.assert_array_equal(
        np.concatenate(list(np.moveaxis(timeline[index], 1, 0)), axis=-1), stacks)
    # Each frame once, packed: S-1 older frames and T+1 newest, then S-1 per restart.
    assert index.max() == depth - 2 + steps + len(restarts) * (depth - 1)
    assert packed.ndim == stacks.ndim == 4
    last = packed.last_frames()
    np.testing.assert_array_equal(np.concatenate(list(last), axis=-1), stacks[-1])


def test_step_stacks_split_and_join_each_step_of_k_environments():
    rng = np.random.default_rng(3)
    env_stacks = [_stacks(rng, restarts=r) for r in [(), (5,), (2, 3)]]  # 3 envs
    steps = np.stack(env_stacks, axis=1)  # [T+1, K, H, W, S]
    sender, receiver = frames.StepStacks(1), frames.StepStacks(1)
    for t, stacks in enumerate(steps):
        newest, restart, older = sender.split(stacks)
        want = [t == 0 or t in r for r in [(), (5,), (2, 3)]]
        assert restart.tolist() == want
        assert len(older) == sum(want)
        rebuilt = receiver.join(newest, restart, older, stacks.shape, stacks.dtype)
        np.testing.assert_array_equal(rebuilt, stacks)
        assert rebuilt.dtype == stacks.dtype
    fresh = frames.StepStacks(1)
    with pytest.raises(ValueError, match="first step must restart every stack"):
        fresh.join(steps[0][..., -1:], np.array([True, False, True]), steps[0][[0, 2], ..., :-1],
                   steps[0].shape, steps[0].dtype)


def test_a_stack_depth_must_hold_whole_frames():
    assert frames.stack_depth(12, 3) == 4 and type(frames.stack_depth(12, 3)) is int
    assert frames.stack_depth(2, 1) == 2  # the shallowest stack: two frames
    for channels, k in [(4, 3), (3, 3), (4, 0)]:
        with pytest.raises(ValueError, match="cannot unstack"):
            frames.stack_depth(channels, k)


def test_packing_stacks_of_part_frames_is_refused():
    """Channels are the last axis: 5 channels are not whole frames of 2 (the height, 6,
    would be)."""
    stacks = np.zeros((3, 6, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="cannot unstack 5 channels in frames of 2"):
        frames.pack_stacks(stacks, 2)
