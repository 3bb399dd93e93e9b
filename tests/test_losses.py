"""Loss terms and reward clipping against hand-computed values and gradients."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from impala_tf import losses


def test_policy_gradient_loss_value_and_gradient():
    # Two actions with equal logits: log pi(a) = log 0.5 for either action.
    logits = tf.Variable([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])  # [T=2, B=1, A=2]
    actions = tf.constant([[1], [0]])
    advantages = tf.Variable([[2.0], [-1.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.policy_gradient_loss(logits, actions, advantages)
    # step 0: -log(0.5) * 2; step 1: pi(0) = 3/4 -> -log(0.75) * -1
    assert loss.numpy() == pytest.approx(-math.log(0.5) * 2 + math.log(0.75) * 1, rel=1e-6)
    # d/dlogits of -log softmax(a) * adv = (softmax - onehot) * adv
    want = np.array([[[0.5 * 2, -0.5 * 2]], [[(0.75 - 1) * -1, 0.25 * -1]]])
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), want, rtol=1e-6)
    assert tape.gradient(loss, advantages) is None


def test_baseline_loss_value_and_gradient():
    vs = tf.Variable([[1.0, 2.0]])
    values = tf.Variable([[0.0, 0.5]])
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.baseline_loss(vs, values)
    assert loss.numpy() == pytest.approx(0.5 * (1.0 + 1.5 ** 2))
    np.testing.assert_allclose(tape.gradient(loss, values).numpy(), [[-1.0, -1.5]])
    assert tape.gradient(loss, vs) is None


def test_entropy_loss_value_and_gradient():
    uniform = tf.zeros([1, 1, 4])
    assert losses.entropy_loss(uniform).numpy() == pytest.approx(-math.log(4.0), rel=1e-6)
    logits = tf.Variable([[[1.0, 0.0, -1.0]]])
    with tf.GradientTape() as tape:
        loss = losses.entropy_loss(logits)
    p = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    entropy = -(p * np.log(p)).sum()
    assert loss.numpy() == pytest.approx(-entropy, rel=1e-6)
    # d(-H)/dz_i = p_i (log p_i + H)
    np.testing.assert_allclose(
        tape.gradient(loss, logits).numpy()[0, 0], p * (np.log(p) + entropy), rtol=1e-5)


def test_mean_reduction_divides_by_time_and_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    actions = rng.integers(0, 5, size=(3, 4))
    adv = rng.normal(size=(3, 4)).astype(np.float32)
    for fn, args in [
        (losses.policy_gradient_loss, (logits, actions, adv)),
        (losses.baseline_loss, (adv, adv * 0.5)),
        (losses.entropy_loss, (logits,)),
    ]:
        summed = fn(*args, reduction="sum").numpy()
        mean = fn(*args, reduction="mean").numpy()
        assert mean == pytest.approx(summed / 12.0, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        losses.entropy_loss(logits, reduction="median")


def test_reward_clipping_values():
    r = tf.constant([-10.0, -5.0, -0.5, 0.0, 0.5, 5.0, 10.0])
    np.testing.assert_allclose(
        losses.clip_rewards(r, "abs_one").numpy(), [-1, -1, -0.5, 0, 0.5, 1, 1])
    np.testing.assert_allclose(losses.clip_rewards(r, "none").numpy(), r.numpy())
    # Reference code: 5 * (0.3 * tanh(r/5) if r < 0 else tanh(r/5)).
    t = np.tanh(np.array([-10.0, -5.0, -0.5, 0.0, 0.5, 5.0, 10.0]) / 5.0)
    want = 5.0 * np.where(t < 0, 0.3 * t, t)
    np.testing.assert_allclose(losses.clip_rewards(r, "soft_asymmetric").numpy(), want, rtol=1e-6)
    assert losses.clip_rewards(tf.constant([5.0]), "soft_asymmetric").numpy()[0] == pytest.approx(
        5 * math.tanh(1.0))
    assert losses.clip_rewards(tf.constant([-5.0]), "soft_asymmetric").numpy()[0] == pytest.approx(
        -1.5 * math.tanh(1.0))
    # Fig. D.1 caption: 0.3 min(tanh r, 0) + 5 max(tanh r, 0).
    fig = losses.clip_rewards(tf.constant([-1.0, 1.0]), "soft_asymmetric_fig_d1").numpy()
    np.testing.assert_allclose(fig, [0.3 * math.tanh(-1.0), 5 * math.tanh(1.0)], rtol=1e-6)


def test_unknown_reward_clipping_names_the_options():
    with pytest.raises(ValueError, match="soft_asymmetric"):
        losses.clip_rewards(tf.constant([1.0]), "abs_two")


def test_terms_agree_with_tensorflow_probability():
    """An independent implementation of the categorical log-probability and entropy."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 3, 6)).astype(np.float32)
    actions = rng.integers(0, 6, size=(4, 3))
    advantages = rng.normal(size=(4, 3)).astype(np.float32)
    dist = tfp.distributions.Categorical(logits=logits)
    want_pg = -tf.reduce_sum(dist.log_prob(actions) * advantages)
    np.testing.assert_allclose(
        losses.policy_gradient_loss(logits, actions, advantages), want_pg, rtol=1e-5)
    np.testing.assert_allclose(
        losses.entropy_loss(logits), -tf.reduce_sum(dist.entropy()), rtol=1e-5)


def test_masked_steps_do_not_count():
    logits = tf.constant([[[0.0, 1.0]], [[2.0, 0.0]]])
    actions = tf.constant([[0], [1]])
    adv = tf.constant([[1.5], [-2.0]])
    mask = tf.constant([[1.0], [0.0]])
    first_only = losses.policy_gradient_loss(logits[:1], actions[:1], adv[:1])
    assert losses.policy_gradient_loss(logits, actions, adv, mask=mask).numpy() == pytest.approx(
        first_only.numpy())
    # The mean divides by the steps kept.
    assert losses.baseline_loss(adv, adv * 0, "mean", mask).numpy() == pytest.approx(
        0.5 * 1.5 ** 2)
    assert losses.entropy_loss(logits, "sum", mask).numpy() == pytest.approx(
        losses.entropy_loss(logits[:1]).numpy())


def test_a_masked_mean_divides_by_the_steps_kept_and_float64_comes_back_float32():
    """Three steps, two kept: the mean is their sum over 2 (not 3, not times 2). Rewards
    given as float64 (numpy's default) are clipped in float32."""
    values = tf.constant([[1.0], [3.0], [10.0]])
    mask = tf.constant([[1.0], [1.0], [0.0]])
    loss = losses.baseline_loss(values, tf.zeros_like(values), "mean", mask).numpy()
    assert loss == pytest.approx(0.5 * (1.0 + 9.0) / 2)
    for clipping in ("none", "abs_one", "soft_asymmetric"):
        clipped = losses.clip_rewards(np.array([-2.0, 0.25, 3.0]), clipping)
        assert clipped.dtype == tf.float32, clipping
