"""device_frames: the gather that builds the agent's stacks from each frame once, against a
loop over the numpy indices, eager and under XLA."""

import numpy as np
import tensorflow as tf

from impala_tf.learning.device_frames import PackedFrames, agent_observation, stacks_from_frames


def test_packed_frames_rebuild_every_stack_from_its_places():
    """Each step's S frames are gathered from the timeline by `index`, oldest first, and
    laid on the channel axis: checked against a loop over the numpy indices."""
    rng = np.random.default_rng(0)
    steps, batch, s, h, w, k = 3, 2, 4, 2, 3, 1
    length = s * steps
    timeline = rng.integers(0, 255, [length, batch, h, w, k], dtype=np.uint8)
    index = rng.integers(0, length, [steps, batch, s]).astype(np.int32)
    expected = np.zeros([steps, batch, h, w, s * k], np.uint8)
    for t in range(steps):
        for b in range(batch):
            for j in range(s):
                expected[t, b, :, :, j * k:(j + 1) * k] = timeline[index[t, b, j], b]
    got = stacks_from_frames(PackedFrames(timeline, index)).numpy()
    np.testing.assert_array_equal(got, expected)
    xla = tf.function(stacks_from_frames, jit_compile=True)
    np.testing.assert_array_equal(xla(PackedFrames(tf.constant(timeline),
                                                   tf.constant(index))).numpy(), expected)
    seen = agent_observation({"frame": PackedFrames(timeline, index), "other": timeline})
    np.testing.assert_array_equal(seen["frame"].numpy(), expected)
    assert seen["other"] is timeline  # only packed frames are gathered
