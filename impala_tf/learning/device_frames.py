"""Frame stacks built on the learner's device: the batch layout the batcher writes for it
(each frame once, `PackedFrames`) and the gather that turns it into the agent's stacks in
the train step. The host side of stacking is `impala_tf.frames`."""

from typing import Any, Dict, Mapping, NamedTuple

import tensorflow as tf


class PackedFrames(NamedTuple):
    """A stacked observation in a learner batch as the batcher writes it for a learner on an
    accelerator: each frame once, and where each step's stack finds its frames.

      timeline  [L, B, H, W, k]    per unroll: step 0's S-1 older frames, each step's
                                   newest frame, then the S-1 older frames of each restarted
                                   stack (L = S(T+1): room for T restarts; places past an
                                   unroll's restarts are neither written nor read)
      index     [T+1, B, S] int32  the timeline places of each step's S frames, oldest first

    The train step gathers the agent's `[T+1, B, H, W, S*k]` stacks on the device
    (`stacks_from_frames`)."""

    timeline: Any
    index: Any


def stacks_from_frames(frames: PackedFrames) -> tf.Tensor:
    """The stacks `[T+1, B, H, W, S*k]` (channels oldest frame first) of `PackedFrames`: one
    gather of whole frames, one transpose."""
    timeline = tf.convert_to_tensor(frames.timeline)
    index = tf.convert_to_tensor(frames.index)
    shape = tf.shape(timeline)
    batch = shape[1]
    rows = tf.reshape(timeline, tf.concat([[-1], shape[2:]], 0))  # [L*B, H, W, k]: l*B + b
    place = index * batch + tf.range(batch)[None, :, None]
    stacks = tf.transpose(tf.gather(rows, place), [0, 1, 3, 4, 2, 5])  # [T+1, B, H, W, S, k]
    out = tf.shape(stacks)
    return tf.reshape(stacks, tf.concat([out[:4], [out[4] * out[5]]], 0))


def agent_observation(observation: Mapping[str, Any]) -> Dict[str, Any]:
    """A batch's observations as the agent reads them (`PackedFrames` stacked)."""
    return {name: stacks_from_frames(value) if isinstance(value, PackedFrames)
            else value for name, value in observation.items()}
