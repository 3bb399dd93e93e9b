"""Central inference's compiled step on the learner's accelerator (SEED RL's design): the
agent acts for a padded batch of environments whose core states stay on the device.

Every environment the learner acts for has a row in a core-state table held on the inference
device (actor i's K environments: rows iK to iK + K - 1; one more row takes the padding's
writes). A call sends the step's inputs (observations, rewards, episode starts, previous
actions), the environments' rows, which of them start afresh, and, when sampling, the
uniform noise of the Gumbel-max draw; the step gathers the rows' states, runs the agent,
writes the new states back and returns the actions and the behaviour logits, the only
tensors that come back to the host. An unroll's initial core state is read from the table
when the unroll starts (`read_rows`: once every T steps per actor).

The step runs on the first device of the learner's strategy (a TPU core under TPUStrategy,
GPU 0 under MirroredStrategy; TensorFlow's choice under the default strategy), XLA-compiled
under a TPU (which only runs compiled code) and when `jit_compile` asks; the agent's
variables are the learner's own. Batches are padded to K times a power of two by the
caller, so a run compiles a few shapes only.
"""

from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

from impala_tf.acting.policy import sampling_generator
from impala_tf.networks.agent import Agent, AgentInput


def inference_device(strategy: Optional[tf.distribute.Strategy]) -> Optional[str]:
    """The device central inference runs on: the strategy's first local replica's, or None
    (TensorFlow's placement) under the default strategy."""
    if strategy is None:
        return None
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has no worker devices
        return None
    return devices[0] if devices else None


class InferenceStep:
    """The agent's batched step with a device-side core-state table (module docstring).

    Args:
      agent: the learner's `Agent`.
      num_rows: environments acted for (actors times K).
      strategy: the learner's; the step runs on its first local device.
      greedy: take the arg-max action (tests) instead of sampling.
      rng: the sampling's `tf.random.Generator` (the learner checkpoints it); None: `seed`.
      seed: seeds a fresh generator when `rng` is None (None: a fresh draw).
      jit_compile: XLA-compile the step (always under a TPU).
    """

    def __init__(self, agent: Agent, num_rows: int,
                 strategy: Optional[tf.distribute.Strategy] = None, greedy: bool = False,
                 rng: Optional[tf.random.Generator] = None, seed: Optional[int] = None,
                 jit_compile: bool = False):
        self.agent = agent
        self.num_rows = int(num_rows)
        self.greedy = bool(greedy)
        self.rng = rng if rng is not None else sampling_generator(seed)
        self.device = inference_device(strategy)
        self.jit_compile = bool(jit_compile) or isinstance(strategy, tf.distribute.TPUStrategy)
        with tf.device(self.device):
            # Row num_rows is the padding's: whatever it holds is never read for an actor.
            self.table = tf.nest.map_structure(
                lambda leaf: tf.Variable(tf.zeros([self.num_rows + 1] + leaf.shape[1:],
                                                  leaf.dtype), trainable=False),
                agent.initial_state(1))
        self._step = tf.function(self._step_graph, jit_compile=self.jit_compile,
                                 reduce_retracing=True)
        self._read = tf.function(self._read_graph, reduce_retracing=True)

    @property
    def padding_row(self) -> int:
        """The row padded environments read and write."""
        return self.num_rows

    def _states(self, rows: tf.Tensor, fresh: tf.Tensor) -> Any:
        """The rows' core states, the agent's initial state where `fresh`."""
        initial = self.agent.initial_state(tf.shape(rows)[0])
        return tf.nest.map_structure(
            lambda table, zero: tf.where(
                tf.reshape(fresh, [-1] + [1] * (len(table.shape) - 1)), zero,
                tf.gather(table, rows)),
            self.table, initial)

    def _step_graph(self, inputs: AgentInput, rows, fresh, noise):
        outputs, state = self.agent.step(inputs, self._states(rows, fresh))
        for table, value in zip(tf.nest.flatten(self.table), tf.nest.flatten(state)):
            table.scatter_nd_update(rows[:, tf.newaxis], value)
        logits = outputs.policy_logits
        if not self.greedy:  # Gumbel-max: the noise is the generator's uniform draw
            logits_for_choice = logits - tf.math.log(-tf.math.log(noise))
        else:
            logits_for_choice = logits
        return tf.argmax(logits_for_choice, axis=-1, output_type=tf.int32), logits

    def _read_graph(self, rows, fresh):
        return self._states(rows, fresh)

    def __call__(self, prev_actions: np.ndarray, reward: np.ndarray, episode_start: np.ndarray,
                 observation, rows: np.ndarray, fresh: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """Acts for the environments in `rows` (int32 `[N]`; `fresh` bool `[N]`: start from
        the initial state): `[N]` inputs -> (actions int32 `[N]`, policy_logits float32
        `[N, A]`) on the host; their new states stay in the table."""
        inputs = AgentInput(
            prev_action=tf.convert_to_tensor(prev_actions, tf.int32),
            reward=tf.convert_to_tensor(reward, tf.float32),
            episode_start=tf.convert_to_tensor(episode_start, tf.bool),
            observation={k: tf.convert_to_tensor(v) for k, v in observation.items()})
        size = len(rows)
        # The same draw, shape and bounds as `BatchedPolicy`'s: one seed, one action sequence.
        noise = (tf.ones([size, self.agent.num_actions]) if self.greedy
                 else self.rng.uniform([size, self.agent.num_actions], 1e-20, 1.0))
        with tf.device(self.device):
            actions, logits = self._step(inputs, tf.constant(rows, tf.int32),
                                         tf.constant(fresh, tf.bool), noise)
        return actions.numpy(), logits.numpy()

    def read_rows(self, rows: np.ndarray, fresh: np.ndarray) -> Any:
        """The core states of `rows` now (the initial state where `fresh`), numpy `[N, ...]`
        leaves: an unroll's initial core state."""
        with tf.device(self.device):
            states = self._read(tf.constant(rows, tf.int32), tf.constant(fresh, tf.bool))
        return tf.nest.map_structure(np.asarray, states)
