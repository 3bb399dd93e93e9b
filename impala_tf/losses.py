"""The IMPALA actor-critic loss terms and reward clipping (paper Section 4.2, Table D.1).

All terms are time-major `[T, B]` and, as in the paper and its reference code, summed over
time and batch (`reduction="sum"`); `reduction="mean"` averages instead (a gin switch on
`TrainStep`). The total loss is

    pg_loss + baseline_cost * baseline_loss + entropy_cost * entropy_loss

with baseline_loss = 1/2 sum (v_s - V(x_s))^2 and entropy_loss = -sum H(pi(.|x_s)), so that
minimising it raises the entropy.
"""

from typing import Callable, Dict

import tensorflow as tf

REDUCTIONS = ("sum", "mean")


def _reduce(x: tf.Tensor, reduction: str, mask=None) -> tf.Tensor:
    """Sum or mean over all elements; `mask` (0/1, same shape) zeroes masked-out elements,
    and the mean then divides by the number of elements kept."""
    if mask is not None:
        mask = tf.cast(mask, x.dtype)
        x = x * mask
        if reduction == "mean":
            return tf.reduce_sum(x) / tf.maximum(tf.reduce_sum(mask), 1.0)
    if reduction == "sum":
        return tf.reduce_sum(x)
    if reduction == "mean":
        return tf.reduce_mean(x)
    raise ValueError(f"Unknown loss reduction {reduction!r}; expected one of {REDUCTIONS}.")


def policy_gradient_loss(
    policy_logits: tf.Tensor,
    actions: tf.Tensor,
    pg_advantages: tf.Tensor,
    reduction: str = "sum",
    mask=None,
) -> tf.Tensor:
    """-log pi(a_s|x_s) * pg_advantages_s, reduced over `[T, B]`.

    Args:
      policy_logits: float32 `[T, B, NUM_ACTIONS]` the learner's logits.
      actions: int `[T, B]` the actions taken.
      pg_advantages: float32 `[T, B]`; treated as a constant (gradient stopped).
      mask: optional 0/1 `[T, B]`; steps with 0 do not count.

    Returns:
      float32 scalar.
    """
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(actions, tf.int32), logits=policy_logits
    )
    return _reduce(cross_entropy * tf.stop_gradient(pg_advantages), reduction, mask)


def baseline_loss(
    vs: tf.Tensor, values: tf.Tensor, reduction: str = "sum", mask=None
) -> tf.Tensor:
    """1/2 (v_s - V(x_s))^2 reduced over `[T, B]`; the gradient flows into `values` only.

    Args:
      vs: float32 `[T, B]` V-trace targets (gradient stopped).
      values: float32 `[T, B]` the learner's baseline.
      mask: optional 0/1 `[T, B]`; steps with 0 do not count.

    Returns:
      float32 scalar (not yet scaled by `baseline_cost`).
    """
    return _reduce(0.5 * tf.square(tf.stop_gradient(vs) - values), reduction, mask)


def entropy_loss(policy_logits: tf.Tensor, reduction: str = "sum", mask=None) -> tf.Tensor:
    """-H(pi(.|x_s)) reduced over `[T, B]` (negative entropy: minimising it explores).

    Args:
      policy_logits: float32 `[T, B, NUM_ACTIONS]`.
      mask: optional 0/1 `[T, B]`; steps with 0 do not count.

    Returns:
      float32 scalar (not yet scaled by `entropy_cost`).
    """
    policy = tf.nn.softmax(policy_logits)
    log_policy = tf.nn.log_softmax(policy_logits)
    entropy = -tf.reduce_sum(policy * log_policy, axis=-1)
    return -_reduce(entropy, reduction, mask)


def clip_abs_one(rewards: tf.Tensor) -> tf.Tensor:
    """clip(r, -1, 1): the paper's Atari and single-task DMLab clipping."""
    return tf.clip_by_value(rewards, -1.0, 1.0)


def clip_soft_asymmetric(rewards: tf.Tensor) -> tf.Tensor:
    """The reference code's (scalable_agent `experiment.py`) DMLab-30 clipping.

    squeezed = tanh(r / 5); 5 * (0.3 * squeezed if r < 0 else squeezed).
    This is the definition the reference DMLab-30 run used. It differs from the formula in the
    caption of the paper's Fig. D.1, which `clip_soft_asymmetric_fig_d1` implements.
    """
    squeezed = tf.tanh(rewards / 5.0)
    return tf.where(rewards < 0, 0.3 * squeezed, squeezed) * 5.0


def clip_soft_asymmetric_fig_d1(rewards: tf.Tensor) -> tf.Tensor:
    """The paper's Fig. D.1 caption: 0.3 min(tanh r, 0) + 5 max(tanh r, 0)."""
    squeezed = tf.tanh(rewards)
    return 0.3 * tf.minimum(squeezed, 0.0) + 5.0 * tf.maximum(squeezed, 0.0)


def clip_none(rewards: tf.Tensor) -> tf.Tensor:
    """No clipping."""
    return tf.identity(rewards)


REWARD_CLIPPING: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "abs_one": clip_abs_one,
    "soft_asymmetric": clip_soft_asymmetric,
    "soft_asymmetric_fig_d1": clip_soft_asymmetric_fig_d1,
    "none": clip_none,
}


def clip_rewards(rewards: tf.Tensor, reward_clipping: str) -> tf.Tensor:
    """Applies the named reward clipping (`abs_one`, `soft_asymmetric`,
    `soft_asymmetric_fig_d1` or `none`) elementwise; float32 in, float32 out."""
    try:
        fn = REWARD_CLIPPING[reward_clipping]
    except KeyError:
        raise ValueError(
            f"Unknown reward_clipping {reward_clipping!r}; expected one of "
            f"{sorted(REWARD_CLIPPING)}."
        ) from None
    return fn(tf.convert_to_tensor(rewards, dtype=tf.float32))
