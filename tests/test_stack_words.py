"""Stacking grey frames as words equals numpy's transpose, into contiguous arrays and into
strided slots of a batch, and declines layouts it cannot serve."""

import numpy as np
import pytest

from impala_tf.stack_words import stack_into, word_view


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
