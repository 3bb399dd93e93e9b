"""One learner update: unroll the agent over a batch, V-trace, the loss, clipped gradients,
RMSProp. Runs as a `tf.function`, optionally XLA-compiled (`jit_compile=True`, the TPU path).

Given a `LearnerBatch` of `[T+1, B, ...]` tensors (layout in `specs.py`), with discount gamma,
for the transitions t -> t+1, t = 0..T-1:
  actions[t] = action[t+1],  rewards[t] = clip(reward[t+1]),
  valid[t] = not episode_start[t+1]   (False for the LAST -> FIRST step between episodes),
  discounts[t] = gamma * discount[t+1] * valid[t],
  values = baseline[:-1], bootstrap_value = baseline[-1], target logits = policy_logits[:-1].
The log importance weights come from `vtrace.from_logits`' helper, and are set to -inf where
`valid` is False (rho = c = 0 there: that step adds nothing to the targets, and the value
of a LAST observation reached by a time limit is bootstrapped from, not trained to 0);
every loss term is masked by `valid`. On data with no episode boundary this is exactly
`vtrace.from_logits`.

With `popart=True` (`popart.py`) the baseline head is in per-task normalised units: the
V-trace targets are computed from the values sigma n(s) + mu of each step's task (`task`
observation; task 0 without one), the baseline is trained towards (v_s - mu) / sigma, the
policy gradient's advantages are divided by sigma, and after each finite update the
statistics move with the batch's targets (all-reduced across replicas) and the head is
rescaled so that the values are preserved.
"""

from typing import Dict, Optional, Tuple

import gin
import keras
import numpy as np
import tensorflow as tf

from impala_tf import losses, vtrace
from impala_tf.learning.optimizers import make_optimizer
from impala_tf.networks.agent import Agent, AgentInput
from impala_tf.popart import PopArt
from impala_tf.run_config import RunConfig
from impala_tf.learning.device_frames import agent_observation
from impala_tf.specs import LearnerBatch, Trajectory


POPART_MOMENTS = "popart_moments"  # a `[3, num_tasks]` entry of compute_loss' stats


def agent_input_from_trajectory(trajectory: Trajectory) -> AgentInput:
    """The agent reads the stored action and reward that led to each observation (stacked
    frames that came frame-major are stacked here, on the learner's device)."""
    return AgentInput(
        prev_action=trajectory.action,
        reward=trajectory.reward,
        episode_start=trajectory.episode_start,
        observation=agent_observation(trajectory.observation),
    )


@gin.configurable
class TrainStep:
    """The loss and the update. Hyperparameters default to the paper's Atari values.

    Args:
      agent: the `Agent` being trained.
      optimizer: a Keras optimiser (see `optimizers.make_optimizer`).
      discount: gamma.
      baseline_cost, entropy_cost: loss weights.
      reward_clipping: `abs_one`, `soft_asymmetric`, `soft_asymmetric_fig_d1` or `none`.
      clip_rho_threshold, clip_pg_rho_threshold, clip_c_threshold, lambda_: V-trace.
      max_grad_norm: global-norm gradient clipping; `None` disables it.
      loss_reduction: `sum` over time and batch (paper) or `mean`.
      jit_compile: XLA-compile the update.
      popart: normalise each task's value targets (PopArt; one task without a `task`
        observation).
      popart_step_size, popart_scale_bounds: PopArt's beta and (sigma_min, sigma_max).
    """

    def __init__(
        self,
        agent: Agent,
        optimizer,
        discount: float = 0.99,
        baseline_cost: float = 0.5,
        entropy_cost: float = 0.01,
        reward_clipping: str = "abs_one",
        clip_rho_threshold: Optional[float] = 1.0,
        clip_pg_rho_threshold: Optional[float] = 1.0,
        clip_c_threshold: Optional[float] = 1.0,
        lambda_: float = 1.0,
        max_grad_norm: Optional[float] = 40.0,
        loss_reduction: str = "sum",
        jit_compile: bool = False,
        popart: bool = False,
        popart_step_size: float = 3e-4,
        popart_scale_bounds: Tuple[float, float] = (1e-4, 1e6),
    ):
        if reward_clipping not in losses.REWARD_CLIPPING:
            raise ValueError(
                f"Unknown reward_clipping {reward_clipping!r}; expected one of "
                f"{sorted(losses.REWARD_CLIPPING)}."
            )
        if loss_reduction not in losses.REDUCTIONS:
            raise ValueError(
                f"Unknown loss_reduction {loss_reduction!r}; expected one of {losses.REDUCTIONS}."
            )
        self.agent = agent
        self.optimizer = optimizer
        self.discount = float(discount)
        self.baseline_cost = float(baseline_cost)
        self.entropy_cost = float(entropy_cost)
        self.reward_clipping = reward_clipping
        self.clip_rho_threshold = clip_rho_threshold
        self.clip_pg_rho_threshold = clip_pg_rho_threshold
        self.clip_c_threshold = clip_c_threshold
        self.lambda_ = float(lambda_)
        self.max_grad_norm = max_grad_norm
        self.loss_reduction = loss_reduction
        self.jit_compile = bool(jit_compile)
        self.popart = (PopArt(agent.num_tasks or 1, popart_step_size, popart_scale_bounds)
                       if popart else None)
        # Create the optimiser slots now, outside any tf.function / XLA cluster.
        self.optimizer.build(self.agent.trainable_variables)
        self._update_fn = tf.function(self.update, jit_compile=self.jit_compile)
        self._unroll_finite_fn = None

    def compute_loss(self, batch: LearnerBatch) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """Total loss (float32 scalar) and its parts, for a `[T+1, B, ...]` batch."""
        trajectory = batch.trajectory
        outputs, _ = self.agent.unroll(
            agent_input_from_trajectory(trajectory), batch.initial_core_state
        )
        rewards = losses.clip_rewards(trajectory.reward[1:], self.reward_clipping)
        valid = tf.logical_not(tf.cast(trajectory.episode_start[1:], tf.bool))
        valid_float = tf.cast(valid, tf.float32)
        discounts = self.discount * tf.cast(trajectory.discount[1:], tf.float32) * valid_float
        actions = trajectory.action[1:]
        target_logits = outputs.policy_logits[:-1]
        baseline = outputs.baseline  # [T+1, B]; in normalised units with PopArt
        if self.popart is not None:
            tasks = tf.cast(trajectory.observation["task"], tf.int32) if (
                "task" in trajectory.observation) else tf.zeros_like(trajectory.action)
            scale = tf.gather(self.popart.scale(), tasks)
            shift = tf.gather(self.popart.mu, tasks)
            baseline = scale * baseline + shift
        values = baseline[:-1]
        target_action_log_probs = vtrace.log_probs_from_logits_and_actions(target_logits, actions)
        behaviour_action_log_probs = vtrace.log_probs_from_logits_and_actions(
            trajectory.behaviour_logits[1:], actions
        )
        log_rhos = tf.where(
            valid, target_action_log_probs - behaviour_action_log_probs, float("-inf")
        )
        vtrace_returns = vtrace.from_importance_weights(
            log_rhos=log_rhos,
            discounts=discounts,
            rewards=rewards,
            values=values,
            bootstrap_value=baseline[-1],
            clip_rho_threshold=self.clip_rho_threshold,
            clip_pg_rho_threshold=self.clip_pg_rho_threshold,
            clip_c_threshold=self.clip_c_threshold,
            lambda_=self.lambda_,
        )
        reduction = self.loss_reduction
        pg_advantages, vs, trained_values = vtrace_returns.pg_advantages, vtrace_returns.vs, values
        if self.popart is not None:  # the losses in each task's normalised units
            pg_advantages = pg_advantages / scale[:-1]
            vs = (vs - shift[:-1]) / scale[:-1]
            trained_values = outputs.baseline[:-1]
        pg_loss = losses.policy_gradient_loss(
            target_logits, actions, pg_advantages, reduction, valid_float
        )
        baseline_loss = losses.baseline_loss(vs, trained_values, reduction, valid_float)
        entropy_loss = losses.entropy_loss(target_logits, reduction, valid_float)
        total_loss = (
            pg_loss + self.baseline_cost * baseline_loss + self.entropy_cost * entropy_loss
        )
        num_valid = tf.maximum(tf.reduce_sum(valid_float), 1.0)

        def valid_mean(x):  # mean over the valid steps of a [T, B] tensor
            return tf.reduce_sum(x * valid_float) / num_valid

        def valid_variance(x):
            return valid_mean(tf.square(x - valid_mean(x)))

        vs_variance = valid_variance(vtrace_returns.vs)
        error_variance = valid_variance(vtrace_returns.vs - values)
        stats = {
            "total_loss": total_loss,
            "pg_loss": pg_loss,
            "baseline_loss": baseline_loss,
            "entropy_loss": entropy_loss,
            "entropy": -losses.entropy_loss(target_logits, "sum", valid_float) / num_valid,
            "mean_rho": tf.reduce_sum(tf.exp(log_rhos)) / num_valid,
            "mean_baseline": valid_mean(values),
            # The critic against its V-trace targets: their scale, and the share of their
            # variance it explains (1 - Var[vs - V] / Var[vs]; 0 for a constant baseline).
            "value_target_mean": valid_mean(vtrace_returns.vs),
            "value_target_std": tf.sqrt(vs_variance),
            "baseline_explained_variance": 1.0 - error_variance / tf.maximum(vs_variance, 1e-8),
        }
        if self.popart is not None:  # taken out (and all-reduced) by `update`
            stats[POPART_MOMENTS] = self.popart.batch_moments(
                vtrace_returns.vs, tasks[:-1], valid_float)
        return total_loss, stats

    def local_gradients(self, batch: LearnerBatch):
        """(gradients of this replica's loss for `agent.trainable_variables`, stats): no
        cross-replica communication, so it can be XLA-compiled by itself under any strategy."""
        with tf.GradientTape() as tape:
            total_loss, stats = self.compute_loss(batch)
        return tape.gradient(total_loss, self.agent.trainable_variables), stats

    def finite_per_unroll(self, batch: LearnerBatch) -> np.ndarray:
        """`[B]` bool: whether each unroll of `batch`, alone, gives a finite loss and finite
        gradients (B single-unroll passes, no update). Traces a skipped non-finite update to
        the unrolls behind it; called only then."""
        if self._unroll_finite_fn is None:
            def unroll_finite(one: LearnerBatch) -> tf.Tensor:
                gradients, stats = self.local_gradients(one)
                return tf.logical_and(tf.math.is_finite(stats["total_loss"]),
                                      tf.math.is_finite(tf.linalg.global_norm(gradients)))

            self._unroll_finite_fn = tf.function(unroll_finite)
        size = int(batch.trajectory.action.shape[1])
        return np.array([bool(self._unroll_finite_fn(LearnerBatch(
            tf.nest.map_structure(lambda x: x[:, b:b + 1], batch.trajectory),
            tf.nest.map_structure(lambda x: x[b:b + 1], batch.initial_core_state))))
            for b in range(size)])

    def compute_gradients(self, batch: LearnerBatch, local_gradients=None):
        """(gradients for `agent.trainable_variables`, stats) without applying them.

        Inside `strategy.run` with several replicas the gradients are all-reduced (summed;
        averaged for `loss_reduction='mean'`), so they are the global batch's gradients.
        `local_gradients` replaces `self.local_gradients` (e.g. by an XLA-compiled copy)."""
        gradients, stats = (local_gradients or self.local_gradients)(batch)
        replica_context = tf.distribute.get_replica_context()
        num_replicas = replica_context.num_replicas_in_sync if replica_context else 1
        if num_replicas > 1:
            gradients = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
            if self.loss_reduction == "mean":
                gradients = [g / num_replicas for g in gradients]
        return gradients, stats

    def apply_gradients(self, gradients) -> Dict[str, tf.Tensor]:
        """Clips by global norm and applies one optimiser step; returns norm, lr and
        `nonfinite_update`: 1.0 where a gradient held NaN/Inf (a non-finite loss gives
        those too) and the step was skipped, so the weights and the optimiser's state (its
        slots and its step count) stay as they were."""
        grad_norm = tf.linalg.global_norm(gradients)
        finite = tf.math.is_finite(grad_norm)
        if self.max_grad_norm is not None:
            # On a skipped step the clipped gradients are NaN; they are not applied.
            gradients, _ = tf.clip_by_global_norm(
                gradients, self.max_grad_norm, use_norm=grad_norm
            )
        learning_rate = self.current_learning_rate()
        self._apply_if(finite, gradients)
        return {"grad_norm": grad_norm, "learning_rate": learning_rate,
                "nonfinite_update": 1.0 - tf.cast(finite, tf.float32)}

    def _apply_if(self, finite, gradients) -> None:
        """Applies the gradients where `finite` (the same on every replica: the gradients are
        all-reduced). Strategies that synchronise through `merge_call` (Mirrored) cannot take
        a `cond` in replica context around the optimiser, so it is taken in cross-replica
        context there, as Keras' LossScaleOptimizer does."""
        variables = self.agent.trainable_variables

        def apply(grads):
            self.optimizer.apply_gradients(zip(grads, variables))
            return tf.constant(True)

        def skip():
            return tf.constant(False)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, lambda: apply(gradients), skip)
            return

        def cross_replica(distribution, finite, gradients):
            finite = distribution.experimental_local_results(finite)[0]
            tf.cond(
                finite,
                lambda: distribution.experimental_local_results(
                    distribution.extended.call_for_each_replica(apply, args=(gradients,)))[0],
                skip,
            )

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, gradients))

    def _assign(self, pairs) -> None:
        """Assigns each (variable, value) pair; the values are the same on every replica.
        Mirrored variables take assignments in cross-replica context (`merge_call`)."""
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            for variable, value in pairs:
                variable.assign(value)
            return

        def cross_replica(distribution, pairs):
            for variable, value in pairs:
                if isinstance(variable, keras.Variable):
                    variable = variable.value  # its tf.Variable
                distribution.extended.update(
                    variable, lambda v, x: v.assign(x), args=(value,), group=False)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(pairs,))

    def update_popart(self, moments: tf.Tensor, finite: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Moves the statistics with the global batch's `moments` (`PopArt.batch_moments`,
        summed over replicas) and rescales the value head to preserve its outputs; nothing
        moves after a skipped (non-finite) update. Returns the statistics' summaries."""
        popart = self.popart
        head = self.agent.baseline_head
        mu, nu = popart.mu.read_value(), popart.nu.read_value()
        sigma = popart.scale_of(mu, nu)
        new_mu, new_nu = popart.updated_moments(moments)
        new_mu = tf.where(finite, new_mu, mu)
        new_nu = tf.where(finite, new_nu, nu)
        new_sigma = popart.scale_of(new_mu, new_nu)
        kernel, bias = popart.preserved_head(
            tf.convert_to_tensor(head.kernel), tf.convert_to_tensor(head.bias),
            mu, sigma, new_mu, new_sigma)
        self._assign([(popart.mu, new_mu), (popart.nu, new_nu),
                      (head.kernel, kernel), (head.bias, bias)])
        return {"popart_mu_mean": tf.reduce_mean(new_mu),
                "popart_sigma_mean": tf.reduce_mean(new_sigma)}

    def current_learning_rate(self) -> tf.Tensor:
        """The optimiser's learning rate now, float32 `[]` (Keras 3 evaluates a schedule at
        the optimiser's step when `learning_rate` is read)."""
        return tf.cast(self.optimizer.learning_rate, tf.float32)

    def update(self, batch: LearnerBatch, local_gradients=None) -> Dict[str, tf.Tensor]:
        """One update, uncompiled: for `strategy.run` inside the learner's `tf.function`
        (`local_gradients` as in `compute_gradients`)."""
        gradients, stats = self.compute_gradients(batch, local_gradients)
        moments = stats.pop(POPART_MOMENTS, None)
        stats.update(self.apply_gradients(gradients))
        if self.popart is not None:
            replica_context = tf.distribute.get_replica_context()
            if replica_context and replica_context.num_replicas_in_sync > 1:
                moments = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, moments)
            stats.update(self.update_popart(moments, stats["nonfinite_update"] == 0.0))
        return stats

    def __call__(self, batch: LearnerBatch) -> Dict[str, tf.Tensor]:
        """One update (compiled); returns float32 scalar stats."""
        return self._update_fn(batch)


def build_train_step(agent: Agent, run_config: Optional[RunConfig] = None) -> TrainStep:
    """The optimiser (decayed over `run_config`'s frames) and the update, from gin."""
    run_config = run_config or RunConfig()
    optimizer = make_optimizer(
        total_environment_frames=run_config.total_environment_frames,
        frames_per_update=run_config.frames_per_update,
    )
    return TrainStep(agent, optimizer)
