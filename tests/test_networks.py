"""The paper's networks: architecture, step/unroll equivalence, resets, instruction encoder."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from impala_tf.networks import (
    Agent, AgentInput, DeepTorso, InstructionEncoder, ShallowTorso, sample_actions,
    tokenize_instruction)
from impala_tf.networks import torsos
from impala_tf.networks.torsos import NatureTorso

SMALL_FRAME = tf.TensorSpec([24, 24, 2], tf.uint8)


def _inputs(T1, B, spec, num_actions, seed=0, starts=None):
    rng = np.random.default_rng(seed)
    observation = {
        name: tf.constant(
            rng.integers(0, 255 if s.dtype == tf.uint8 else 50, size=[T1, B] + s.shape.as_list()),
            s.dtype)
        for name, s in spec.items()
    }
    if starts is None:
        starts = np.zeros([T1, B], bool)
    return AgentInput(
        prev_action=tf.constant(rng.integers(0, num_actions, size=[T1, B]), tf.int32),
        reward=tf.constant(rng.normal(size=[T1, B]) * 3, tf.float32),
        episode_start=tf.constant(starts),
        observation=observation,
    )


def _at(inputs, t):
    return tf.nest.map_structure(lambda x: x[t], inputs)


def test_shallow_torso_matches_figure_3():
    torso = ShallowTorso()
    out = torso(tf.zeros([2, 84, 84, 4], tf.uint8))
    assert out.shape == (2, 256)
    conv1, conv2 = torso.conv1, torso.conv2
    assert (conv1.filters, conv1.kernel_size, conv1.strides) == (16, (8, 8), (4, 4))
    assert (conv2.filters, conv2.kernel_size, conv2.strides) == (32, (4, 4), (2, 2))
    # 84 -> 20 -> 9 spatially: fc sees 9 * 9 * 32 inputs.
    assert torso.fc.kernel.shape == (9 * 9 * 32, 256)


def test_nature_torso_is_the_dqn_network():
    torso = NatureTorso()
    out = torso(tf.zeros([2, 84, 84, 4], tf.uint8))
    assert out.shape == (2, 512)
    convs = [torso.conv1, torso.conv2, torso.conv3]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))]
    # 84 -> 20 -> 9 -> 7 spatially: fc sees 7 * 7 * 64 = 3136 inputs (as in DQN).
    assert torso.fc.kernel.shape == (3136, 512)
    params = (32 * 8 * 8 * 4 + 32) + (64 * 4 * 4 * 32 + 64) + (64 * 3 * 3 * 64 + 64) \
        + (3136 * 512 + 512)
    assert torso.count_params() == params == 1_684_128  # DQN's 1.68M torso parameters


def test_deep_torso_matches_figure_3():
    torso = DeepTorso()
    out = torso(tf.zeros([2, 72, 96, 3], tf.uint8))
    assert out.shape == (2, 256)
    convs = [w for w in torso.trainable_weights if len(w.shape) == 4]
    assert len(convs) == 3 * (1 + 2 * 2)  # per section: one conv, two blocks of two convs
    assert [w.shape[-1] for w in convs] == [16] * 5 + [32] * 5 + [32] * 5
    assert all(w.shape[:2] == (3, 3) for w in convs)
    # 72x96 -> 36x48 -> 18x24 -> 9x12 after three stride-2 pools.
    assert torso.fc.kernel.shape == (9 * 12 * 32, 256)


def _numpy_conv(x, kernel, bias, stride):
    """A valid-padded convolution, written out in numpy: x `[H, W, C]`, kernel
    `[k, k, C, F]` -> `[(H-k)//stride+1, (W-k)//stride+1, F]`."""
    k = kernel.shape[0]
    rows, cols = (x.shape[0] - k) // stride + 1, (x.shape[1] - k) // stride + 1
    out = np.empty((rows, cols, kernel.shape[-1]), np.float64)
    for i in range(rows):
        for j in range(cols):
            patch = x[i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    return out


def test_the_shallow_torso_equals_its_numpy_computation_on_raw_frames():
    """Uint8 frames in, the paper's shallow torso out: frame / 255, conv 16 8x8 stride 4,
    conv 32 4x4 stride 2 (valid, ReLU), flatten, fully connected 256 (ReLU), computed
    independently in numpy with the layer's weights (row-major flatten, as Keras)."""
    torso = ShallowTorso()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, [2, 36, 28, 4]).astype(np.uint8)
    got = torso(tf.constant(frames)).numpy()
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    weights = {name: layer.get_weights() for name, layer in
               (("conv1", torso.conv1), ("conv2", torso.conv2), ("fc", torso.fc))}
    for b in range(2):
        x = frames[b].astype(np.float64) / 255.0
        x = relu(_numpy_conv(x, *weights["conv1"], stride=4))  # 36x28 -> 8x6
        x = relu(_numpy_conv(x, *weights["conv2"], stride=2))  # 8x6 -> 3x2
        assert x.shape == (3, 2, 32)
        expected = relu(x.reshape(-1) @ weights["fc"][0] + weights["fc"][1])
        np.testing.assert_allclose(got[b], expected, rtol=1e-4, atol=1e-5)


def test_centred_frames_subtract_each_stacked_frames_screen_mean():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, [2, 6, 5, 3]).astype(np.uint8)
    frame[1, :, :, 1] = 87  # a flat screen (Pong's background grey) reads 0 when centred
    expected = frame / 255.0 - (frame / 255.0).mean(axis=(1, 2), keepdims=True)
    assert np.abs(torsos.scale_frame(tf.constant(frame)).numpy() - frame / 255.0).max() < 1e-6
    gin.bind_parameter("frames.centre", True)
    try:
        centred = torsos.scale_frame(tf.constant(frame)).numpy()
        np.testing.assert_allclose(centred, expected, atol=1e-6)
        assert np.abs(centred[1, :, :, 1]).max() < 1e-6
        # ... inside the torso: the model sees the centred screen.
        torso = ShallowTorso()
        big = tf.constant(rng.integers(0, 256, [1, 24, 24, 2]).astype(np.uint8))
        x = tf.cast(big, tf.float32) / 255.0
        x -= tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        np.testing.assert_allclose(
            torso(big).numpy(), torso.fc(torso.flatten(torso.conv2(torso.conv1(x)))).numpy(),
            rtol=1e-5, atol=1e-6)
    finally:
        gin.clear_config()


@pytest.mark.parametrize("use_lstm", [True, False])
@pytest.mark.parametrize("with_instruction", [False, True])
def test_unroll_equals_a_loop_of_steps(use_lstm, with_instruction):
    spec = {"frame": SMALL_FRAME}
    if with_instruction:
        spec["instruction"] = tf.TensorSpec([6], tf.int32)
    agent = Agent(5, spec, torso="shallow", use_lstm=use_lstm, lstm_size=32)
    T1, B = 6, 3
    starts = np.zeros([T1, B], bool)
    starts[2, 0] = starts[4, 1] = starts[0, 2] = True
    inputs = _inputs(T1, B, spec, 5, starts=starts)
    state0 = agent.initial_state(B)
    if use_lstm:
        state0 = tf.nest.map_structure(lambda x: tf.random.normal(x.shape), state0)
    unrolled, final = agent.unroll(inputs, state0)
    state = state0
    for t in range(T1):
        out, state = agent.step(_at(inputs, t), state)
        np.testing.assert_allclose(out.policy_logits, unrolled.policy_logits[t], atol=1e-5)
        np.testing.assert_allclose(out.baseline, unrolled.baseline[t], atol=1e-5)
    for got, want in zip(tf.nest.flatten(final), tf.nest.flatten(state)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert unrolled.policy_logits.shape == (T1, B, 5) and unrolled.baseline.shape == (T1, B)


def test_reset_cuts_the_state():
    spec = {"frame": SMALL_FRAME}
    agent = Agent(4, spec, lstm_size=16)
    T1, B = 5, 2
    starts = np.zeros([T1, B], bool)
    starts[2, :] = True
    a = _inputs(T1, B, spec, 4, seed=1, starts=starts)
    b = _inputs(T1, B, spec, 4, seed=2, starts=starts)
    # Same inputs from the reset on, different history and initial state before it.
    mixed = tf.nest.map_structure(lambda x, y: tf.concat([y[:2], x[2:]], 0), a, b)
    state_a = tf.nest.map_structure(lambda x: tf.random.normal(x.shape), agent.initial_state(B))
    state_b = tf.nest.map_structure(lambda x: tf.random.normal(x.shape), agent.initial_state(B))
    out_a, _ = agent.unroll(a, state_a)
    out_b, _ = agent.unroll(mixed, state_b)
    np.testing.assert_allclose(out_a.policy_logits[2:], out_b.policy_logits[2:], atol=1e-6)
    assert np.abs(out_a.policy_logits[:2] - out_b.policy_logits[:2]).max() > 1e-4
    # Without the reset flag the history leaks through: the test can fail.
    no_reset = lambda x: x._replace(episode_start=tf.zeros_like(x.episode_start))
    leak_a, _ = agent.unroll(no_reset(a), state_a)
    leak_b, _ = agent.unroll(no_reset(mixed), state_b)
    assert np.abs(leak_a.policy_logits[2:] - leak_b.policy_logits[2:]).max() > 1e-4


def test_previous_action_and_reward_are_ignored_at_episode_start():
    spec = {"frame": SMALL_FRAME}
    agent = Agent(4, spec, use_lstm=False)
    x = _at(_inputs(1, 3, spec, 4, starts=np.ones([1, 3], bool)), 0)
    y = x._replace(prev_action=(x.prev_action + 1) % 4, reward=x.reward + 7.0)
    np.testing.assert_allclose(agent.step(x, ())[0].policy_logits,
                               agent.step(y, ())[0].policy_logits, atol=1e-6)
    not_start = lambda v: v._replace(episode_start=tf.zeros_like(v.episode_start))
    assert np.abs(agent.step(not_start(x), ())[0].policy_logits
                  - agent.step(not_start(y), ())[0].policy_logits).max() > 1e-5


def test_last_reward_is_clipped_before_the_core():
    spec = {"frame": SMALL_FRAME}
    agent = Agent(3, spec, use_lstm=False)
    x = _at(_inputs(1, 2, spec, 3), 0)
    big = agent.step(x._replace(reward=tf.fill([2], 5.0)), ())[0].policy_logits
    one = agent.step(x._replace(reward=tf.fill([2], 1.0)), ())[0].policy_logits
    np.testing.assert_allclose(big, one, atol=1e-6)


def test_instruction_tokens_and_padding():
    ids = tokenize_instruction("pick the red balloon", max_length=6, num_buckets=1000)
    assert ids.dtype == np.int32 and ids.shape == (6,)
    assert np.all(ids[:4] >= 1) and np.all(ids[:4] <= 1000) and np.all(ids[4:] == 0)
    np.testing.assert_array_equal(ids, tokenize_instruction("pick  the red balloon", 6))
    assert np.all(tokenize_instruction("a b c d e f g h", 4) > 0)

    encoder = InstructionEncoder()
    assert encoder.embedding.output_dim == 20 and encoder.lstm.units == 64
    short = tokenize_instruction("pick red", 8)
    padded = encoder(tf.constant([short]))
    # Independent reading of only the two real words: padding must not change the result.
    emb = encoder.embedding(tf.constant([short[:2]]))
    _, state = encoder.lstm.unroll(tf.transpose(emb, [1, 0, 2]), encoder.lstm.initial_state(1))
    np.testing.assert_allclose(padded.numpy(), state.h.numpy(), atol=1e-6)
    other = encoder(tf.constant([tokenize_instruction("pick blue", 8)]))
    assert np.abs(padded - other).max() > 1e-4
    assert padded.shape == (1, 64)


def test_agent_with_instruction_uses_it():
    spec = {"frame": SMALL_FRAME, "instruction": tf.TensorSpec([6], tf.int32)}
    agent = Agent(9, spec, use_lstm=False)
    x = _at(_inputs(1, 1, spec, 9), 0)
    y = x._replace(observation=dict(x.observation, instruction=tf.constant(
        [tokenize_instruction("go to the green key", 6)])))
    assert np.abs(agent.step(x, ())[0].policy_logits
                  - agent.step(y, ())[0].policy_logits).max() > 1e-6


def test_unroll_under_xla_matches_eager():
    spec = {"frame": SMALL_FRAME}
    agent = Agent(4, spec, torso="deep", lstm_size=16)
    inputs = _inputs(4, 2, spec, 4, starts=np.eye(4, 2, dtype=bool))
    eager, _ = agent.unroll(inputs, agent.initial_state(2))
    compiled, _ = tf.function(agent.unroll, jit_compile=True)(inputs, agent.initial_state(2))
    np.testing.assert_allclose(eager.policy_logits, compiled.policy_logits, atol=1e-5)
    np.testing.assert_allclose(eager.baseline, compiled.baseline, atol=1e-5)


def test_parameter_counts_of_the_paper_agents():
    atari = {"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}
    shallow = Agent(18, atari, torso="shallow")
    torso = 16 * 8 * 8 * 4 + 16 + 32 * 4 * 4 * 16 + 32 + 9 * 9 * 32 * 256 + 256
    lstm = 4 * 256 * (256 + 1 + 18) + 4 * 256 * 256 + 4 * 256
    heads = 256 * 18 + 18 + 256 + 1
    assert shallow.count_params() == torso + lstm + heads


def test_bad_observation_spec_is_named():
    with pytest.raises(ValueError, match="frame"):
        Agent(4, {"pixels": SMALL_FRAME})
    with pytest.raises(ValueError, match="depth"):
        Agent(4, {"frame": SMALL_FRAME, "depth": SMALL_FRAME})
    with pytest.raises(ValueError, match="Unknown torso 'resnet'"):
        Agent(4, {"frame": SMALL_FRAME}, torso="resnet")


def test_sample_actions_follows_the_logits():
    logits = tf.constant([[0.0, 20.0, 0.0], [20.0, 0.0, 0.0]])
    actions = sample_actions(tf.tile(logits, [50, 1]))
    assert actions.dtype == tf.int32
    np.testing.assert_array_equal(actions.numpy(), np.tile([1, 0], 50))


def _kernels(agent):
    """name -> kernel as a `[fan_in, units]` matrix, for every conv and dense kernel."""
    return {v.path: v.numpy().reshape(-1, v.shape[-1]) for v in agent.trainable_variables
            if v.path.endswith("kernel") and "core" not in v.path}


def _agent_under(scheme):
    gin.parse_config(f"initializers.scheme = '{scheme}'")
    try:
        tf.keras.utils.set_random_seed(0)
        return Agent(6, {"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}, torso="nature",
                     use_lstm=False)
    finally:
        gin.clear_config()


def test_orthogonal_scheme_is_baselines_init():
    """Gain sqrt(2) ahead of ReLUs, 0.01 on the policy logits, 1 on the baseline: every
    kernel's columns are orthogonal with that norm."""
    kernels = _kernels(_agent_under("orthogonal"))
    assert len(kernels) == 6  # three convolutions, the torso's dense layer, two heads
    for path, kernel in kernels.items():
        gain = 0.01 if "policy_logits" in path else 1.0 if "baseline" in path else np.sqrt(2)
        np.testing.assert_allclose(kernel.T @ kernel, gain ** 2 * np.eye(kernel.shape[1]),
                                   atol=1e-5 * gain ** 2, err_msg=path)


def test_sonnet_scheme_is_the_papers_truncated_normal():
    """scalable_agent's Sonnet layers: a normal of stddev 1/sqrt(fan_in) cut at 2 stddevs,
    whose spread is then 0.8796/sqrt(fan_in)."""
    kernels = _kernels(_agent_under("sonnet"))
    for path, kernel in kernels.items():
        fan_in = kernel.shape[0]
        assert np.abs(kernel).max() <= 2.0 / np.sqrt(fan_in), path
        if kernel.size > 5000:
            assert np.std(kernel) * np.sqrt(fan_in) == pytest.approx(0.8796, rel=0.05), path


def test_glorot_stays_the_default_and_a_bad_scheme_is_named():
    """Keras' glorot_uniform, the same draws as an agent built with no binding at all."""
    kernels = _agent_under("glorot").trainable_variables
    tf.keras.utils.set_random_seed(0)
    implicit = Agent(6, {"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}, torso="nature",
                     use_lstm=False).trainable_variables
    for kernel, same in zip(kernels, implicit):
        np.testing.assert_array_equal(kernel.numpy(), same.numpy(), err_msg=kernel.path)
        if kernel.path.endswith("kernel"):
            receptive_field = int(np.prod(kernel.shape[:-2]))
            fan_in, fan_out = receptive_field * kernel.shape[-2], receptive_field * kernel.shape[-1]
            assert np.abs(kernel.numpy()).max() <= np.sqrt(6.0 / (fan_in + fan_out))
    with pytest.raises(ValueError, match="'orthgonal' is not a scheme"):
        _agent_under("orthgonal")
