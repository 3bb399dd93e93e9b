"""step_messages: central inference's messages. A step carries each stacked frame once and the
learner rebuilds exactly the stacks the environment returned (continued, restarted, every
channel count); malformed steps and out-of-bound frames are codec errors; a stream's first
step restarts every stack; hello, settings and actions round trip."""

import numpy as np
import pytest

from impala_tf.envs.base import BatchedTimeStep
from impala_tf.rpc import codec, step_messages


def _stacks(rng, steps, k, depth=4, restarts=(3, 7)):
    """[steps, K=3, 6, 5, depth*k] stacks shifting by a frame a step; at each of `restarts`
    env 1 restarts with unrelated older frames, and env 2 restarts at every step."""
    frames = rng.integers(0, 256, (steps + depth, 3, 6, 5, k), dtype=np.uint8)
    stack = np.stack([np.concatenate(frames[t:t + depth], axis=-1) for t in range(steps)])
    for t in range(1, steps):
        if t in restarts:
            stack[t, 1, ..., :-k] = rng.integers(0, 256, stack[t, 1, ..., :-k].shape)
            for u in range(t + 1, steps):
                stack[u, 1, ..., :-k] = stack[u - 1, 1, ..., k:]
        stack[t, 2, ..., :-k] = rng.integers(0, 256, stack[t, 2, ..., :-k].shape)
    return stack


@pytest.mark.parametrize("k", [1, 3])
def test_step_messages_rebuild_the_stacks_from_each_frame_once(k):
    rng = np.random.default_rng(k)
    stacks = _stacks(rng, 10, k)
    encoder = step_messages.StepEncoder({"frame": k})
    decoder = step_messages.StepDecoder({"frame": (np.uint8, (6, 5, 4 * k)), "aux": (
        np.float32, (2,))}, 3, {"frame": k})
    sizes = []
    for t, stack in enumerate(stacks):
        aux = rng.normal(size=(3, 2)).astype(np.float32)
        timestep = BatchedTimeStep(np.full(3, 1, np.int8), rng.normal(size=3).astype(np.float32),
                                   np.ones(3, np.float32), {"frame": stack, "aux": aux})
        message = encoder.encode(timestep, [])
        sizes.append(len(message))
        got, episodes = decoder.decode(message)
        np.testing.assert_array_equal(got.observation["frame"], stack)
        np.testing.assert_array_equal(got.observation["aux"], aux)
        np.testing.assert_array_equal(got.reward, timestep.reward)
        assert episodes == []
        # Where the stacks restarted, for the unrolls central inference assembles: every
        # stack at step 0, env 2's at every step, env 1's where its older frames changed.
        continued = (stack[..., :-k] == stacks[t - 1][..., k:]).reshape(3, -1).all(1)
        np.testing.assert_array_equal(decoder.restarts["frame"],
                                      np.ones(3, bool) if t == 0 else ~continued)
    # Step 0 sends every older frame; later steps those of env 2 (and env 1 at restarts).
    assert sizes[1] < sizes[0] and sizes[3] > sizes[2]


def _message(fields, meta=None):
    return codec.encode(step_messages.STEP_MAGIC, fields, meta or {})


def _step_fields(k=3, restart=(True, True, True), older=3):
    return {"step_type": np.zeros(k, np.int8), "reward": np.zeros(k, np.float32),
            "discount": np.ones(k, np.float32),
            "observation/frame/newest": np.zeros((k, 6, 5, 1), np.uint8),
            "observation/frame/restart": np.array(restart),
            "observation/frame/older": np.zeros((older, 6, 5, 3), np.uint8)}


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(reward=np.array([0, np.nan, 0], np.float32)), "NaN"),
    (lambda f: f.update(discount=np.array([0, 2, 0], np.float32)), "discount"),
    (lambda f: f.update(step_type=np.array([0, 7, 0], np.int8)), "step_type"),
    (lambda f: f.update({"observation/frame/older": np.zeros((2, 6, 5, 3), np.uint8)}),
     "older"),
    (lambda f: f.pop("observation/frame/newest"), "newest"),
])
def test_malformed_steps_are_codec_errors(change, message):
    decoder = step_messages.StepDecoder({"frame": (np.uint8, (6, 5, 4))}, 3, {"frame": 1})
    fields = _step_fields()
    change(fields)
    with pytest.raises(codec.CodecError, match=message):
        decoder.decode(_message(fields))


def test_stacked_observations_keep_their_bounds_frame_by_frame():
    """Bounds given per channel of the whole stack (a dm_env BoundedArray) still check the
    newest and older frames apart."""
    shape = (2, 2, 4)
    decoder = step_messages.StepDecoder({"frame": (np.float32, shape)}, 2, {"frame": 1},
                                        observation_bounds={"frame": (np.zeros(shape),
                                                                      np.ones(shape))})
    encoder = step_messages.StepEncoder({"frame": 1})
    stack = np.full((2,) + shape, 0.5, np.float32)

    def step(value):
        return BatchedTimeStep(np.zeros(2, np.int8), np.zeros(2, np.float32),
                               np.ones(2, np.float32), {"frame": value})

    np.testing.assert_array_equal(decoder.decode(encoder.encode(step(stack), []))[0]
                                  .observation["frame"], stack)
    stack = stack.copy()
    stack[1, 0, 0, -1] = 2.0
    with pytest.raises(codec.CodecError, match="frame/newest"):
        decoder.decode(encoder.encode(step(stack), []))


def test_a_streams_first_step_restarts_every_stack():
    decoder = step_messages.StepDecoder({"frame": (np.uint8, (6, 5, 4))}, 3, {"frame": 1})
    with pytest.raises(codec.CodecError, match="first step must restart"):
        decoder.decode(_message(_step_fields(restart=(True, False, True), older=2)))


def test_hello_settings_and_actions_round_trip_and_bad_actions_are_refused():
    assert step_messages.decode_settings(step_messages.encode_settings(8, 1234, 6)) == {
        "num_envs": 8, "seed": 1234, "num_actions": 6}
    actions = np.array([0, 5, 2], np.int32)
    np.testing.assert_array_equal(
        step_messages.decode_actions(step_messages.encode_actions(actions), 3, 6), actions)
    with pytest.raises(codec.CodecError):
        step_messages.decode_actions(step_messages.encode_actions(np.array([0, 6, 2])), 3, 6)
    with pytest.raises(codec.CodecError):
        step_messages.decode_actions(step_messages.encode_actions(actions), 4, 6)
