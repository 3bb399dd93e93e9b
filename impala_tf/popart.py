"""PopArt: per-task normalisation of the value targets (van Hasselt et al. 2016, "Learning
values across many orders of magnitude"; Hessel et al. 2018, "Multi-task Deep Reinforcement
Learning with PopArt").

For each task i the learner keeps running first and second moments of its V-trace targets,
  mu_i <- (1 - beta) mu_i + beta E[v_s],   nu_i <- (1 - beta) nu_i + beta E[v_s^2],
  sigma_i = clip(sqrt(nu_i - mu_i^2), sigma_min, sigma_max),
where E is the mean over the batch's valid steps of task i (tasks absent from a batch keep
their statistics). The agent's value head i outputs n_i(s), the value in task i's normalised
units; the value is V_i(s) = sigma_i n_i(s) + mu_i. When the statistics move from
(mu, sigma) to (mu', sigma'), head i's weights w_i and bias b_i are rescaled,
  w_i <- w_i sigma_i / sigma'_i,   b_i <- (sigma_i b_i + mu_i - mu'_i) / sigma'_i,
so that every V_i(s) is unchanged ("preserving outputs precisely").

`TrainStep(popart=True)` computes the V-trace targets from V, trains n_i(s) towards
(v_s - mu_i) / sigma_i and scales the policy gradient's advantages by 1 / sigma_i; after each
finite update it moves the statistics with the batch's targets and rescales the head.
"""

from typing import Tuple

import tensorflow as tf


class PopArt(tf.Module):
    """The statistics of `num_tasks` tasks: `mu` and `nu`, float32 `[num_tasks]` variables.

    Args:
      num_tasks: tasks (1 for a single-task agent).
      step_size: beta.
      scale_bounds: (sigma_min, sigma_max).
    """

    def __init__(self, num_tasks: int, step_size: float = 3e-4,
                 scale_bounds: Tuple[float, float] = (1e-4, 1e6)):
        super().__init__(name="popart")
        if not 0.0 < float(step_size) <= 1.0:
            raise ValueError(f"PopArt step_size must be in (0, 1], got {step_size}.")
        low, high = (float(b) for b in scale_bounds)
        if not 0.0 < low <= high:
            raise ValueError(f"PopArt scale_bounds must be 0 < low <= high, got {scale_bounds}.")
        self.num_tasks = int(num_tasks)
        self.step_size = float(step_size)
        self.scale_bounds = (low, high)
        # Initially the identity: mu = 0, sigma = 1 (nu = 1).
        self.mu = tf.Variable(tf.zeros([self.num_tasks]), trainable=False, name="mu")
        self.nu = tf.Variable(tf.ones([self.num_tasks]), trainable=False, name="nu")

    def scale_of(self, mu: tf.Tensor, nu: tf.Tensor) -> tf.Tensor:
        """sigma `[num_tasks]` from moments."""
        low, high = self.scale_bounds
        return tf.clip_by_value(tf.sqrt(tf.maximum(nu - tf.square(mu), 0.0)), low, high)

    def scale(self) -> tf.Tensor:
        return self.scale_of(self.mu, self.nu)

    def batch_moments(self, targets: tf.Tensor, tasks: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """float32 `[3, num_tasks]`: per task, the weight (count of valid steps), and the
        weighted sums of the targets and of their squares. `targets`, `weights` float32 and
        `tasks` int32, all `[T, B]`. Sums, so that replicas add them up (all-reduce)."""
        one_hot = tf.one_hot(tasks, self.num_tasks) * weights[..., tf.newaxis]  # [T, B, N]
        count = tf.reduce_sum(one_hot, axis=[0, 1])
        total = tf.reduce_sum(one_hot * targets[..., tf.newaxis], axis=[0, 1])
        squares = tf.reduce_sum(one_hot * tf.square(targets)[..., tf.newaxis], axis=[0, 1])
        return tf.stack([count, total, squares])

    def updated_moments(self, moments: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """(mu', nu') after one step towards the batch's means; tasks with no valid step in
        the batch keep theirs."""
        count, total, squares = moments[0], moments[1], moments[2]
        present = count > 0
        safe = tf.maximum(count, 1.0)
        beta = self.step_size
        mu = tf.where(present, (1.0 - beta) * self.mu + beta * total / safe, self.mu)
        nu = tf.where(present, (1.0 - beta) * self.nu + beta * squares / safe, self.nu)
        return mu, nu

    @staticmethod
    def preserved_head(kernel: tf.Tensor, bias: tf.Tensor, mu: tf.Tensor, sigma: tf.Tensor,
                       new_mu: tf.Tensor, new_sigma: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """The value head's kernel `[F, num_tasks]` and bias `[num_tasks]` rescaled so that
        sigma' n'(s) + mu' = sigma n(s) + mu for every input."""
        kernel = kernel * (sigma / new_sigma)[tf.newaxis, :]
        bias = (sigma * bias + mu - new_mu) / new_sigma
        return kernel, bias
