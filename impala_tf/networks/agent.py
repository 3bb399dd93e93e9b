"""The IMPALA agent (paper Fig. 3): torso, last reward and action, optional instruction
encoder, optional LSTM core with resets at episode starts, policy and baseline heads.

Two ways in:
  * `step(inputs, state)` for actors: one time step for a batch of environments, `[B, ...]`;
  * `unroll(inputs, state)` for the learner: `[T+1, B, ...]`, resets inside the unroll.

`AgentInput` fields at time t are what the agent sees when it acts at observation t:
the action and reward that led to it, whether it starts an episode, and the observation.
At an episode start the previous action and reward belong to another episode and are
zeroed, and the core state is reset before the observation is read.
"""

from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import keras
import tensorflow as tf

from impala_tf.gin_utils import keras_configurable
from impala_tf.networks.initializers import kernel_initializer
from impala_tf.networks.instruction import InstructionEncoder
from impala_tf.networks.lstm import LSTMState, ResettableLSTM
from impala_tf.networks.torsos import make_torso

CoreState = Union[LSTMState, Tuple[()]]


class AgentInput(NamedTuple):
    """What the agent reads at one step; `[B]` (step) or `[T+1, B]` (unroll) leading dims.

    prev_action: int32, the action that led to this observation.
    reward: float32, the raw reward that came with this observation (clipped inside).
    episode_start: bool, this observation is the first of an episode.
    observation: dict name -> tensor, e.g. `frame` uint8 `[..., H, W, C]`; for DMLab
      language levels `instruction` int32 `[..., L]` token ids; in multi-task runs `task`
      int32 `[...]`, the task's index (it picks the value head; the policy does not read it).
    """

    prev_action: tf.Tensor
    reward: tf.Tensor
    episode_start: tf.Tensor
    observation: Dict[str, tf.Tensor]


class AgentOutput(NamedTuple):
    """policy_logits: float32 `[..., NUM_ACTIONS]`; baseline: float32 `[...]`, the value head
    of the observation's task (with PopArt, the value in that task's normalised units)."""

    policy_logits: tf.Tensor
    baseline: tf.Tensor


def sample_actions(policy_logits: tf.Tensor, seed: Optional[int] = None) -> tf.Tensor:
    """Samples int32 actions `[B]` from float32 logits `[B, NUM_ACTIONS]`."""
    return tf.cast(tf.random.categorical(policy_logits, 1, seed=seed)[:, 0], tf.int32)


@keras_configurable
class Agent(keras.Model):
    """IMPALA's actor-critic network.

    Args:
      num_actions: size of the discrete action set (from the environment).
      observation_spec: mapping name -> `tf.TensorSpec` of one observation without batch
        dims; must hold `frame` (uint8 `[H, W, C]`); an `instruction` entry (int32 `[L]`)
        switches the instruction encoder on; a `task` entry (int32 `[]`) selects one of
        `num_tasks` value heads.
      num_tasks: value heads, one per task (required with a `task` observation; the
        environment's `task` bound + 1: `specs.num_tasks`). Without one: a single head.
      torso: `shallow` or `deep` (the paper's; gin-configure `ShallowTorso` / `DeepTorso`),
        or `mlp` for tiny test games.
      use_lstm: whether to put the LSTM core between the torso and the heads.
      lstm_size: LSTM core units (256 in the paper).
    """

    def __init__(
        self,
        num_actions: int,
        observation_spec: Mapping[str, tf.TensorSpec],
        torso: str = "shallow",
        use_lstm: bool = True,
        lstm_size: int = 256,
        num_tasks: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if "frame" not in observation_spec:
            raise ValueError(
                f"observation_spec needs a 'frame' entry, got {sorted(observation_spec)}."
            )
        unknown = set(observation_spec) - {"frame", "instruction", "task"}
        if unknown:
            raise ValueError(f"Agent cannot read observations {sorted(unknown)}.")
        if ("task" in observation_spec) != (num_tasks is not None):
            raise ValueError("A 'task' observation and num_tasks go together: got "
                             f"observations {sorted(observation_spec)}, num_tasks={num_tasks}.")
        if num_tasks is not None and int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}.")
        self.num_tasks = int(num_tasks) if num_tasks is not None else None
        self.num_actions = int(num_actions)
        self.observation_spec = dict(observation_spec)
        self.use_lstm = bool(use_lstm)
        self.torso_name = torso
        self.torso = make_torso(torso)
        self.instruction_encoder = (
            InstructionEncoder() if "instruction" in observation_spec else None
        )
        self.core = ResettableLSTM(lstm_size, name="core") if self.use_lstm else None
        self.policy_head = keras.layers.Dense(
            self.num_actions, kernel_initializer=kernel_initializer("policy"),
            name="policy_logits")
        self.baseline_head = keras.layers.Dense(
            self.num_tasks or 1, kernel_initializer=kernel_initializer("baseline"),
            name="baseline")
        self._create_variables()

    # -- state ------------------------------------------------------------------------------
    def initial_state(self, batch_size) -> CoreState:
        """Zero core state for `batch_size` environments (an empty tuple without an LSTM)."""
        if self.core is None:
            return ()
        return self.core.initial_state(batch_size)

    def _create_variables(self) -> None:
        dummy = AgentInput(
            prev_action=tf.zeros([1, 1], tf.int32),
            reward=tf.zeros([1, 1], tf.float32),
            episode_start=tf.ones([1, 1], tf.bool),
            observation={
                name: tf.zeros([1, 1] + spec.shape.as_list(), spec.dtype)
                for name, spec in self.observation_spec.items()
            },
        )
        self.unroll(dummy, self.initial_state(1))
        self.built = True

    # -- shared encoder -----------------------------------------------------------------------
    def _encode(self, inputs: AgentInput) -> tf.Tensor:
        """Flat `[N, ...]` inputs -> core input float32 `[N, F]`."""
        not_start = 1.0 - tf.cast(inputs.episode_start, tf.float32)
        clipped_reward = tf.clip_by_value(tf.cast(inputs.reward, tf.float32), -1.0, 1.0)
        last_action = tf.one_hot(tf.cast(inputs.prev_action, tf.int32), self.num_actions)
        parts = [
            self.torso(inputs.observation["frame"]),
            (clipped_reward * not_start)[:, tf.newaxis],
            last_action * not_start[:, tf.newaxis],
        ]
        if self.instruction_encoder is not None:
            parts.append(self.instruction_encoder(inputs.observation["instruction"]))
        return tf.concat(parts, axis=-1)

    def _heads(self, core_output: tf.Tensor, observation) -> AgentOutput:
        values = self.baseline_head(core_output)  # [N, num_tasks or 1]
        if self.num_tasks is None:
            baseline = tf.squeeze(values, axis=-1)
        else:  # the observation's task's head (a one-hot product: XLA-friendly)
            task = tf.one_hot(tf.cast(observation["task"], tf.int32), self.num_tasks)
            baseline = tf.reduce_sum(values * task, axis=-1)
        return AgentOutput(policy_logits=self.policy_head(core_output), baseline=baseline)

    # -- entry points --------------------------------------------------------------------------
    def step(self, inputs: AgentInput, state: CoreState) -> Tuple[AgentOutput, CoreState]:
        """One step for a batch of environments: `[B, ...]` inputs -> `[B, ...]` outputs."""
        core_input = self._encode(inputs)
        if self.core is None:
            return self._heads(core_input, inputs.observation), state
        core_output, state = self.core.step(core_input, state, reset=inputs.episode_start)
        return self._heads(core_output, inputs.observation), state

    def unroll(self, inputs: AgentInput, state: CoreState) -> Tuple[AgentOutput, CoreState]:
        """`[T+1, B, ...]` inputs and the state before step 0 -> `[T+1, B, ...]` outputs and
        the state after the last step. Same numbers as `step` applied T+1 times."""
        leading = tf.shape(inputs.episode_start)
        flat = tf.nest.map_structure(_merge_time_and_batch, inputs)
        core_input = self._encode(flat)
        if self.core is None:
            core_output = core_input
        else:
            core_input = _split_time_and_batch(core_input, leading)
            core_output, state = self.core.unroll(
                core_input, state, reset=inputs.episode_start
            )
            core_output = _merge_time_and_batch(core_output)
        outputs = self._heads(core_output, flat.observation)
        return tf.nest.map_structure(lambda x: _split_time_and_batch(x, leading), outputs), state

    def call(self, inputs: AgentInput, state: CoreState):
        return self.unroll(inputs, state)


def _merge_time_and_batch(x: tf.Tensor) -> tf.Tensor:
    """`[T, B, ...]` -> `[T * B, ...]`, keeping the static inner shape."""
    return tf.reshape(x, [-1] + x.shape[2:].as_list())


def _split_time_and_batch(x: tf.Tensor, leading: tf.Tensor) -> tf.Tensor:
    """`[T * B, ...]` -> `[T, B, ...]` given `leading = [T, B]`."""
    return tf.reshape(x, tf.concat([leading, x.shape[1:].as_list()], axis=0))


def build_agent(observation_spec: Mapping[str, tf.TensorSpec], num_actions: int,
                num_tasks: Optional[int] = None) -> Agent:
    """The `Agent` for these specs (`num_tasks`: `specs.num_tasks` of the environment's
    spec, for multi-task environments); its hyperparameters come from gin."""
    return Agent(num_actions=num_actions, observation_spec=observation_spec,
                 num_tasks=num_tasks)
