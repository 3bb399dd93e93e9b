"""V-trace off-policy targets (Espeholt et al., 2018, Section 4.1, equation (1)).

Everything is time-major: the leading axis is time T, the second the batch B.
With per-step discounts gamma_t (0 where an episode ended), the targets are

    v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t V
    delta_t V = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t))
    rho_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t)),
    c_i = lambda * min(c_bar, pi(a_i|x_i) / mu(a_i|x_i))

computed by the backward recursion v_s - V(x_s) = delta_s V + gamma_s c_s (v_{s+1} - V(x_{s+1})),
which runs as one graph op (`tf.scan` inside a `tf.function`; XLA compiles it as a while loop).
The policy-gradient advantages are
    pg_advantages_s = min(pg_rho_bar, pi/mu)_s (r_s + gamma_s v_{s+1} - V(x_s)).
Both outputs are targets: they carry no gradient.
"""

from typing import NamedTuple, Optional

import tensorflow as tf


class VTraceReturns(NamedTuple):
    """V-trace targets, each float32 `[T, B]`."""

    vs: tf.Tensor
    pg_advantages: tf.Tensor


class VTraceFromLogitsReturns(NamedTuple):
    """V-trace targets with the log-probabilities they were built from, each `[T, B]`."""

    vs: tf.Tensor
    pg_advantages: tf.Tensor
    log_rhos: tf.Tensor
    behaviour_action_log_probs: tf.Tensor
    target_action_log_probs: tf.Tensor


def _check_rank(name: str, tensor: tf.Tensor, rank: int, what: str) -> None:
    if tensor.shape.rank is None:
        raise ValueError(f"V-trace: `{name}` has unknown rank; expected rank {rank} {what}.")
    if tensor.shape.rank != rank:
        raise ValueError(
            f"V-trace: `{name}` must have rank {rank} {what}, got shape {tensor.shape.as_list()}."
        )


def _check_same_shape(name: str, tensor: tf.Tensor, ref_name: str, ref: tf.Tensor) -> None:
    if not tensor.shape.is_compatible_with(ref.shape):
        raise ValueError(
            f"V-trace: `{name}` has shape {tensor.shape.as_list()} but `{ref_name}` has shape "
            f"{ref.shape.as_list()}; they must match (time-major [T, B])."
        )


def log_probs_from_logits_and_actions(policy_logits: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """log pi(a_t | x_t) for the taken actions.

    Args:
      policy_logits: float `[T, B, NUM_ACTIONS]` unnormalised log-probabilities.
      actions: int `[T, B]` indices in `[0, NUM_ACTIONS)`.

    Returns:
      float `[T, B]`.
    """
    policy_logits = tf.convert_to_tensor(policy_logits, dtype=tf.float32)
    actions = tf.convert_to_tensor(actions)
    _check_rank("policy_logits", policy_logits, 3, "[T, B, NUM_ACTIONS]")
    _check_rank("actions", actions, 2, "[T, B]")
    _check_same_shape("actions", actions, "policy_logits[..., 0]", policy_logits[..., 0])
    return -tf.nn.sparse_softmax_cross_entropy_with_logits(
        logits=policy_logits, labels=tf.cast(actions, tf.int32)
    )


@tf.function(autograph=False, reduce_retracing=True)
def _backward_recursion(deltas: tf.Tensor, decays: tf.Tensor) -> tf.Tensor:
    """acc_s = deltas_s + decays_s * acc_{s+1}, acc_T = 0; `[T, B]` in, `[T, B]` out."""

    def step(acc, elems):
        delta, decay = elems
        return delta + decay * acc

    return tf.scan(
        step,
        (deltas, decays),
        initializer=tf.zeros_like(deltas[0]),
        reverse=True,
    )


def from_importance_weights(
    log_rhos,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    lambda_: float = 1.0,
    name: str = "vtrace_from_importance_weights",
) -> VTraceReturns:
    """V-trace targets from log importance weights log(pi(a_t|x_t) / mu(a_t|x_t)).

    Args:
      log_rhos: float32 `[T, B]` log importance weights of the taken actions.
      discounts: float32 `[T, B]` discount applied to the transition t -> t+1
        (gamma, or 0 where the episode ended at t+1).
      rewards: float32 `[T, B]` reward of the transition t -> t+1 (already clipped).
      values: float32 `[T, B]` the learner's baseline V(x_t).
      bootstrap_value: float32 `[B]` the learner's baseline V(x_T) after the last step.
      clip_rho_threshold: rho-bar for the value targets; `None` means no clipping.
      clip_pg_rho_threshold: rho-bar for the policy-gradient advantages; `None`: no clipping.
      clip_c_threshold: c-bar for the trace coefficients; `None`: no clipping.
      lambda_: the trace-cutting mixing factor (Remark 2 of the paper); 1 is plain V-trace.

    Returns:
      `VTraceReturns(vs, pg_advantages)`, float32 `[T, B]` each, with stopped gradients.

    Raises:
      ValueError: on a wrong rank or mismatched shapes.
    """
    with tf.name_scope(name):
        log_rhos = tf.convert_to_tensor(log_rhos, dtype=tf.float32)
        discounts = tf.convert_to_tensor(discounts, dtype=tf.float32)
        rewards = tf.convert_to_tensor(rewards, dtype=tf.float32)
        values = tf.convert_to_tensor(values, dtype=tf.float32)
        bootstrap_value = tf.convert_to_tensor(bootstrap_value, dtype=tf.float32)

        _check_rank("log_rhos", log_rhos, 2, "[T, B]")
        _check_rank("discounts", discounts, 2, "[T, B]")
        _check_rank("rewards", rewards, 2, "[T, B]")
        _check_rank("values", values, 2, "[T, B]")
        _check_rank("bootstrap_value", bootstrap_value, 1, "[B]")
        for arg_name, arg in (("discounts", discounts), ("rewards", rewards), ("values", values)):
            _check_same_shape(arg_name, arg, "log_rhos", log_rhos)
        _check_same_shape("bootstrap_value", bootstrap_value, "values[-1]", values[-1])
        for arg_name, arg in (
            ("clip_rho_threshold", clip_rho_threshold),
            ("clip_pg_rho_threshold", clip_pg_rho_threshold),
            ("clip_c_threshold", clip_c_threshold),
        ):
            if arg is not None and not arg > 0:
                raise ValueError(f"V-trace: `{arg_name}` must be positive or None, got {arg}.")

        rhos = tf.exp(log_rhos)
        clipped_rhos = rhos if clip_rho_threshold is None else tf.minimum(clip_rho_threshold, rhos)
        cs = rhos if clip_c_threshold is None else tf.minimum(clip_c_threshold, rhos)
        cs = lambda_ * cs

        values_t_plus_1 = tf.concat([values[1:], bootstrap_value[tf.newaxis]], axis=0)
        deltas = clipped_rhos * (rewards + discounts * values_t_plus_1 - values)

        # Targets carry no gradient: stop it before the recursion so none is ever built.
        vs_minus_v_xs = _backward_recursion(
            tf.stop_gradient(deltas), tf.stop_gradient(discounts * cs)
        )
        vs = vs_minus_v_xs + values

        vs_t_plus_1 = tf.concat([vs[1:], bootstrap_value[tf.newaxis]], axis=0)
        clipped_pg_rhos = (
            rhos if clip_pg_rho_threshold is None else tf.minimum(clip_pg_rho_threshold, rhos)
        )
        pg_advantages = clipped_pg_rhos * (rewards + discounts * vs_t_plus_1 - values)

        return VTraceReturns(
            vs=tf.stop_gradient(vs), pg_advantages=tf.stop_gradient(pg_advantages)
        )


def from_logits(
    behaviour_policy_logits,
    target_policy_logits,
    actions,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold: Optional[float] = 1.0,
    clip_pg_rho_threshold: Optional[float] = 1.0,
    clip_c_threshold: Optional[float] = 1.0,
    lambda_: float = 1.0,
    name: str = "vtrace_from_logits",
) -> VTraceFromLogitsReturns:
    """V-trace targets for softmax policies given as logits.

    Args:
      behaviour_policy_logits: float32 `[T, B, NUM_ACTIONS]` logits of mu, the actor's policy.
      target_policy_logits: float32 `[T, B, NUM_ACTIONS]` logits of pi, the learner's policy.
      actions: int `[T, B]` actions sampled from mu.
      discounts, rewards, values, bootstrap_value, clip_*_threshold, lambda_: as in
        `from_importance_weights`.

    Returns:
      `VTraceFromLogitsReturns`: `vs`, `pg_advantages` (stopped gradients), `log_rhos`,
      `behaviour_action_log_probs`, `target_action_log_probs`, each float32 `[T, B]`.
      `target_action_log_probs` keeps its gradient for the policy-gradient loss.
    """
    with tf.name_scope(name):
        behaviour_policy_logits = tf.convert_to_tensor(behaviour_policy_logits, dtype=tf.float32)
        target_policy_logits = tf.convert_to_tensor(target_policy_logits, dtype=tf.float32)
        _check_rank("behaviour_policy_logits", behaviour_policy_logits, 3, "[T, B, NUM_ACTIONS]")
        _check_rank("target_policy_logits", target_policy_logits, 3, "[T, B, NUM_ACTIONS]")
        _check_same_shape(
            "target_policy_logits", target_policy_logits,
            "behaviour_policy_logits", behaviour_policy_logits,
        )
        target_action_log_probs = log_probs_from_logits_and_actions(target_policy_logits, actions)
        behaviour_action_log_probs = log_probs_from_logits_and_actions(
            behaviour_policy_logits, actions
        )
        log_rhos = target_action_log_probs - behaviour_action_log_probs
        returns = from_importance_weights(
            log_rhos=log_rhos,
            discounts=discounts,
            rewards=rewards,
            values=values,
            bootstrap_value=bootstrap_value,
            clip_rho_threshold=clip_rho_threshold,
            clip_pg_rho_threshold=clip_pg_rho_threshold,
            clip_c_threshold=clip_c_threshold,
            lambda_=lambda_,
        )
        return VTraceFromLogitsReturns(
            vs=returns.vs,
            pg_advantages=returns.pg_advantages,
            log_rhos=log_rhos,
            behaviour_action_log_probs=behaviour_action_log_probs,
            target_action_log_probs=target_action_log_probs,
        )
