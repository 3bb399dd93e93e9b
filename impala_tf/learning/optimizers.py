"""The paper's optimiser: RMSProp with the learning rate decayed linearly to 0 over the run.

`TF1RMSprop` is Keras' RMSprop with the mean-square accumulator initialised to 1, as in
`tf.compat.v1.train.RMSPropOptimizer` that the reference code used; Keras initialises it to 0,
which makes the first updates ~1/sqrt(epsilon) times larger. The update is
    ms <- decay * ms + (1 - decay) * g^2;  mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
    theta <- theta - mom

`epsilon_outside_sqrt=True` gives PyTorch's form instead, `g / (sqrt(ms) + epsilon)`, the one
TorchBeast's MonoBeast and most PyTorch A2C/IMPALA ports use (with their `epsilon` and
`initial_mean_square=0`). The two forms differ a lot when gradients are small: with per-weight
mean squares far below epsilon, TF1's step is lr * g / sqrt(epsilon) (plain SGD), PyTorch's
lr * g / epsilon, 1/sqrt(epsilon) times larger for the same epsilon.

`make_optimizer.kind = 'adam'` gives Adam instead (Kingma & Ba, 2015, as PPO and SEED RL's
Atari agents use it), with the same schedule and the same handling of all-reduced gradients.
"""

from typing import Optional

import gin
import keras
import tensorflow as tf


class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(update) = initial_learning_rate * max(0, 1 - update * frames_per_update / total_frames).

    `update` is the optimiser's iteration count, so the schedule resumes with a checkpoint.
    """

    def __init__(
        self, initial_learning_rate: float, total_environment_frames: float,
        frames_per_update: float,
    ):
        if not total_environment_frames > 0:
            raise ValueError("total_environment_frames must be positive.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_environment_frames = float(total_environment_frames)
        self.frames_per_update = float(frames_per_update)

    def __call__(self, step):
        frames = tf.cast(step, tf.float32) * float(self.frames_per_update)
        fraction_left = tf.maximum(0.0, 1.0 - frames / self.total_environment_frames)
        return self.initial_learning_rate * fraction_left

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_environment_frames": self.total_environment_frames,
            "frames_per_update": self.frames_per_update,
        }


class TF1RMSprop(keras.optimizers.RMSprop):
    """Keras RMSprop whose mean-square slots start at `initial_mean_square` (TF1: 1.0).

    Under a `tf.distribute` strategy it applies the gradients it is given as they are:
    `TrainStep` all-reduces them first, so that global-norm clipping sees the gradient of the
    global batch (Keras would sum them again, after a per-replica clipping).
    """

    def __init__(
        self,
        *args,
        initial_mean_square: float = 1.0,
        epsilon_outside_sqrt: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if epsilon_outside_sqrt and kwargs.get("centered"):
            raise ValueError("epsilon_outside_sqrt=True does not support centered=True.")
        self.initial_mean_square = float(initial_mean_square)
        self.epsilon_outside_sqrt = bool(epsilon_outside_sqrt)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for velocity in self._velocities:
            if velocity is not None:
                velocity.assign(tf.fill(velocity.shape, self.initial_mean_square))

    def update_step(self, gradient, variable, learning_rate):
        if not self.epsilon_outside_sqrt:
            return super().update_step(gradient, variable, learning_rate)
        lr = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        velocity = self._velocities[index]
        self.assign(velocity, self.rho * velocity + (1.0 - self.rho) * tf.square(gradient))
        increment = lr * gradient / (tf.sqrt(velocity) + self.epsilon)
        if self.momentum > 0:
            momentum = self._momentums[index]
            self.assign(momentum, self.momentum * momentum + increment)
            increment = momentum
        self.assign_sub(variable, increment)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    def get_config(self):
        config = super().get_config()
        config["initial_mean_square"] = self.initial_mean_square
        config["epsilon_outside_sqrt"] = self.epsilon_outside_sqrt
        return config


class AllReducedAdam(keras.optimizers.Adam):
    """Keras Adam that applies the gradients it is given as they are (see `TF1RMSprop`)."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


OPTIMIZERS = ("rmsprop", "adam")


@gin.configurable
def make_optimizer(
    total_environment_frames: float,
    frames_per_update: float,
    learning_rate: float = 0.0006,
    decay: float = 0.99,
    momentum: float = 0.0,
    epsilon: Optional[float] = None,
    initial_mean_square: float = 1.0,
    epsilon_outside_sqrt: bool = False,
    kind: str = "rmsprop",
    beta_1: float = 0.9,
    beta_2: float = 0.999,
) -> keras.optimizers.Optimizer:
    """RMSProp (paper Table G.1 defaults) or Adam, with `LinearDecay` over the run's frames.

    The defaults are TF1's RMSProp as the paper used it (epsilon 0.01 inside the square
    root); `epsilon_outside_sqrt=True` with `initial_mean_square=0` is PyTorch's
    `torch.optim.RMSprop`. `kind='adam'` takes `learning_rate`, `beta_1`, `beta_2` and
    `epsilon` (outside the square root, as in the Adam paper and PyTorch; default 1e-8, the
    Adam paper's). An argument the chosen kind does not use, set away from its default, is
    an error naming it (a file that switches an RMSProp experiment to Adam must not keep a
    changed `decay` silently). `frames_per_update` is the frames of one optimiser step (a
    fraction of a batch's when a batch is reused).

    Gradient clipping is done by `TrainStep` (global norm), not by the optimiser.
    """
    schedule = LinearDecay(learning_rate, total_environment_frames, frames_per_update)
    if kind not in OPTIMIZERS:
        raise ValueError(f"Unknown make_optimizer.kind {kind!r}; expected one of {OPTIMIZERS}.")
    unused = ({"decay": (decay, 0.99), "momentum": (momentum, 0.0),
               "initial_mean_square": (initial_mean_square, 1.0),
               "epsilon_outside_sqrt": (epsilon_outside_sqrt, False)} if kind == "adam"
              else {"beta_1": (beta_1, 0.9), "beta_2": (beta_2, 0.999)})
    changed = [f"{name} = {value!r}" for name, (value, default) in unused.items()
               if value != default]
    if changed:
        raise ValueError(f"make_optimizer.kind = {kind!r} does not use make_optimizer."
                         f"{', make_optimizer.'.join(changed)}; remove it or change kind.")
    if epsilon is None:
        epsilon = 1e-8 if kind == "adam" else 0.01
    if kind == "adam":
        return AllReducedAdam(learning_rate=schedule, beta_1=beta_1, beta_2=beta_2,
                              epsilon=epsilon)
    return TF1RMSprop(
        learning_rate=schedule,
        rho=decay,
        momentum=momentum,
        epsilon=epsilon,
        initial_mean_square=initial_mean_square,
        epsilon_outside_sqrt=epsilon_outside_sqrt,
    )
