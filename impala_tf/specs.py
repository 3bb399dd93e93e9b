"""The unroll's shapes and dtypes, from the environment's specs (the unroll itself, the unit
of experience that travels from actors to the learner, is `impala_tf.unroll`).

One spec describes it; the actor, the wire codec, the batcher and the learner all derive
shapes and dtypes from `trajectory_spec`, never by hand.

Time step t of an unroll (t = 0..T, T+1 steps; step 0 repeats the previous unroll's last):
  observation[t]       the observation the agent acted on at t (dict name -> tensor);
  action[t]            the action that led to observation t (taken at t-1);
  reward[t]            the reward that came with observation t;
  discount[t]          the environment's discount on arriving at observation t: 0 when
                       observation t ends its episode by termination, 1 otherwise (also when
                       a time limit cut the episode, so the learner can bootstrap from it);
  episode_start[t]     observation t is the first of an episode (dm_env FIRST);
  behaviour_logits[t]  logits of the behaviour policy mu that chose `action[t]` (at t-1).
`action`, `reward`, `discount` and `behaviour_logits` at t describe the transition t-1 -> t
(the reference code's layout), so the learner uses steps 1..T of them.

Environments follow dm_env: an episode's last observation (LAST) is a step of the unroll,
and the next step is the FIRST of a new episode. The agent still acts at LAST (the action is
ignored by the environment); the learner masks that LAST -> FIRST transition out.
"""

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import tensorflow as tf

from impala_tf.unroll import Trajectory, fields as unroll_fields


class LearnerBatch(NamedTuple):
    """trajectory: `Trajectory` of `[T+1, B, ...]`; initial_core_state: the agent's core
    state before step 0 of each unroll, `[B, ...]` leaves (an empty tuple without LSTM)."""

    trajectory: Trajectory
    initial_core_state: Any


def tensor_specs(observation_spec: Mapping[str, Any]) -> Dict[str, tf.TensorSpec]:
    """dm_env observation specs (name -> `specs.Array`) -> name -> `tf.TensorSpec`."""
    return {
        name: tf.TensorSpec(list(spec.shape), tf.as_dtype(spec.dtype), name=name)
        for name, spec in observation_spec.items()
    }


def observation_bounds(observation_spec: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """dm_env observation specs -> name -> (minimum, maximum) for the bounded ones
    (`specs.BoundedArray`), which the learner holds actors' unrolls to."""
    return {name: (spec.minimum, spec.maximum) for name, spec in observation_spec.items()
            if hasattr(spec, "minimum") and hasattr(spec, "maximum")}


def num_tasks(observation_spec: Mapping[str, Any]) -> Optional[int]:
    """Tasks of a multi-task environment (its `task` observation's maximum + 1, from dm_env
    specs or from `observation_bounds`' pairs), else None."""
    spec = observation_spec.get("task")
    if spec is None:
        return None
    maximum = spec[1] if isinstance(spec, tuple) else spec.maximum
    return int(maximum) + 1


def trajectory_spec(
    observation_spec: Mapping[str, tf.TensorSpec], num_actions: int, unroll_length: int
) -> Trajectory:
    """`Trajectory` of `tf.TensorSpec`s for one unroll of `unroll_length + 1` steps."""
    steps = unroll_length + 1
    return Trajectory(
        observation={
            name: tf.TensorSpec([steps] + spec.shape.as_list(), spec.dtype)
            for name, spec in observation_spec.items()
        },
        action=tf.TensorSpec([steps], tf.int32),
        reward=tf.TensorSpec([steps], tf.float32),
        discount=tf.TensorSpec([steps], tf.float32),
        episode_start=tf.TensorSpec([steps], tf.bool),
        behaviour_logits=tf.TensorSpec([steps, num_actions], tf.float32),
    )


def batched(spec_tree: Any, batch_size: int, time_major: bool = True) -> Any:
    """Adds a batch dim to every spec: after time (`[T+1, B, ...]`) or first (`[B, ...]`)."""

    def add(spec: tf.TensorSpec) -> tf.TensorSpec:
        shape = spec.shape.as_list()
        shape = shape[:1] + [batch_size] + shape[1:] if time_major else [batch_size] + shape
        return tf.TensorSpec(shape, spec.dtype, name=spec.name)

    return tf.nest.map_structure(add, spec_tree)


# -- the unroll as it travels: flat names -> arrays (`unroll`) -------------------------------

def core_state_spec(initial_state: Any) -> Any:
    """Spec of one environment's core state (no batch dim) from `agent.initial_state(1)`."""
    return tf.nest.map_structure(
        lambda x: tf.TensorSpec(x.shape[1:], x.dtype), initial_state
    )


def unroll_wire_spec(
    observation_spec: Mapping[str, tf.TensorSpec],
    num_actions: int,
    unroll_length: int,
    initial_state: Any,
) -> Dict[str, tf.TensorSpec]:
    """The flat spec of one unroll on the wire (see `unroll_fields`)."""
    return unroll_fields(
        trajectory_spec(observation_spec, num_actions, unroll_length),
        core_state_spec(initial_state),
    )
