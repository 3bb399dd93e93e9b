"""Stacking grey frames as words equals numpy's transpose, into contiguous arrays and into
strided slots of a batch, and declines layouts it cannot serve; continuing stacks by a frame
as words equals numpy's channel slices."""

import numpy as np
import pytest

from impala_tf.stack_words import shift_into, stack_continues, stack_into, word_view


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_words_equal_the_transpose(depth):
    frames = np.random.default_rng(depth).integers(0, 256, (depth, 3, 7, 5), dtype=np.uint8)
    expected = np.moveaxis(frames, 0, -1)
    out = np.empty(expected.shape, np.uint8)
    stack_into(word_view(out), list(frames))
    np.testing.assert_array_equal(out, expected)
    batch = np.zeros((3, 4, 7, 5, depth), np.uint8)  # slot 2 of a batch: strided, aligned
    stack_into(word_view(batch[:, 2]), list(frames))
    np.testing.assert_array_equal(batch[:, 2], expected)
    assert not batch[:, [0, 1, 3]].any()


def test_layouts_words_cannot_serve_are_declined():
    assert word_view(np.empty((4, 5, 3), np.uint8)) is None  # 3 frames: no 3-byte word
    assert word_view(np.empty((4, 5, 4), np.int32)) is None
    assert word_view(np.empty((4, 4, 5), np.uint8).transpose(0, 2, 1)) is None  # strided
    assert word_view(np.empty(4 * 5 * 4 + 1, np.uint8)[1:].reshape(4, 5, 4)) is None


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
    shift_into(out, last, newest, channels)
    np.testing.assert_array_equal(out, expected)
    changed = expected.copy()
    changed[1, 2, 3, 0] ^= 1  # the oldest channel: another stack
    changed[3, 0, 0, -1] ^= 1  # the newest channel: still a continuation
    if depth > channels + 1:
        changed[4, 5, 6, depth - channels - 1] ^= 1  # the last older channel
    continues = stack_continues(changed, last, channels)
    np.testing.assert_array_equal(
        continues, (changed[..., :-channels] == last[..., channels:]).reshape(5, -1).all(1))
    assert continues[0] and continues[2] and continues[3] and not continues[1]
