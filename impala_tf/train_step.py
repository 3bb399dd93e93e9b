"""One learner update: unroll the agent over a batch, V-trace, the loss, clipped gradients,
RMSProp. Runs as a `tf.function`, optionally XLA-compiled (`jit_compile=True`, the TPU path).

Given a `LearnerBatch` of `[T+1, B, ...]` tensors, with discount gamma:
  rewards[t]   = clip(reward[t+1]),  actions[t] = action[t+1],
  discounts[t] = gamma * (1 - episode_start[t+1]),   t = 0..T-1,
  values = baseline[:-1], bootstrap_value = baseline[-1], target logits = policy_logits[:-1].
An episode that ended by a time limit is cut like a terminal one (as in the reference code):
the unroll does not hold the last observation of that episode to bootstrap from.
"""

from typing import Dict, Optional, Tuple

import gin
import tensorflow as tf

from impala_tf import losses, vtrace
from impala_tf.networks.agent import Agent, AgentInput
from impala_tf.specs import LearnerBatch, Trajectory


def agent_input_from_trajectory(trajectory: Trajectory) -> AgentInput:
    """The agent reads the stored action and reward that led to each observation."""
    return AgentInput(
        prev_action=trajectory.action,
        reward=trajectory.reward,
        episode_start=trajectory.episode_start,
        observation=trajectory.observation,
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
        # Create the optimiser slots now, outside any tf.function / XLA cluster.
        self.optimizer.build(self.agent.trainable_variables)
        self._update_fn = tf.function(self._update, jit_compile=self.jit_compile)

    def compute_loss(self, batch: LearnerBatch) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """Total loss (float32 scalar) and its parts, for a `[T+1, B, ...]` batch."""
        trajectory = batch.trajectory
        outputs, _ = self.agent.unroll(
            agent_input_from_trajectory(trajectory), batch.initial_core_state
        )
        rewards = losses.clip_rewards(trajectory.reward[1:], self.reward_clipping)
        discounts = self.discount * (1.0 - tf.cast(trajectory.episode_start[1:], tf.float32))
        actions = trajectory.action[1:]
        target_logits = outputs.policy_logits[:-1]
        values = outputs.baseline[:-1]
        vtrace_returns = vtrace.from_logits(
            behaviour_policy_logits=trajectory.behaviour_logits[1:],
            target_policy_logits=target_logits,
            actions=actions,
            discounts=discounts,
            rewards=rewards,
            values=values,
            bootstrap_value=outputs.baseline[-1],
            clip_rho_threshold=self.clip_rho_threshold,
            clip_pg_rho_threshold=self.clip_pg_rho_threshold,
            clip_c_threshold=self.clip_c_threshold,
            lambda_=self.lambda_,
        )
        pg_loss = losses.policy_gradient_loss(
            target_logits, actions, vtrace_returns.pg_advantages, self.loss_reduction
        )
        baseline_loss = losses.baseline_loss(vtrace_returns.vs, values, self.loss_reduction)
        entropy_loss = losses.entropy_loss(target_logits, self.loss_reduction)
        total_loss = (
            pg_loss + self.baseline_cost * baseline_loss + self.entropy_cost * entropy_loss
        )
        stats = {
            "total_loss": total_loss,
            "pg_loss": pg_loss,
            "baseline_loss": baseline_loss,
            "entropy_loss": entropy_loss,
            "mean_rho": tf.reduce_mean(tf.exp(vtrace_returns.log_rhos)),
            "mean_baseline": tf.reduce_mean(values),
        }
        return total_loss, stats

    def compute_gradients(self, batch: LearnerBatch):
        """(gradients for `agent.trainable_variables`, stats) without applying them."""
        with tf.GradientTape() as tape:
            total_loss, stats = self.compute_loss(batch)
        gradients = tape.gradient(total_loss, self.agent.trainable_variables)
        return gradients, stats

    def apply_gradients(self, gradients) -> Dict[str, tf.Tensor]:
        """Clips by global norm and applies one optimiser step; returns norm and lr."""
        grad_norm = tf.linalg.global_norm(gradients)
        if self.max_grad_norm is not None:
            gradients, _ = tf.clip_by_global_norm(
                gradients, self.max_grad_norm, use_norm=grad_norm
            )
        learning_rate = self.current_learning_rate()
        self.optimizer.apply_gradients(zip(gradients, self.agent.trainable_variables))
        return {"grad_norm": grad_norm, "learning_rate": learning_rate}

    def current_learning_rate(self) -> tf.Tensor:
        lr = self.optimizer.learning_rate
        return tf.convert_to_tensor(lr() if callable(lr) else lr, dtype=tf.float32)

    def _update(self, batch: LearnerBatch) -> Dict[str, tf.Tensor]:
        gradients, stats = self.compute_gradients(batch)
        stats.update(self.apply_gradients(gradients))
        return stats

    def __call__(self, batch: LearnerBatch) -> Dict[str, tf.Tensor]:
        """One update (compiled); returns float32 scalar stats."""
        return self._update_fn(batch)
