"""specs: the unroll layout every part derives from. Shapes and dtypes against the module
docstring's table, flat names in a fixed order, and the dm_env spec helpers (the flat round
trip: test_unroll; the device gather: test_device_frames)."""

import numpy as np
import tensorflow as tf
from dm_env import specs as dm_specs

from impala_tf.networks.lstm import LSTMState
from impala_tf.specs import (batched, core_state_spec, num_tasks, observation_bounds,
                             tensor_specs, trajectory_spec, unroll_wire_spec)

OBSERVATION = {"frame": tf.TensorSpec([4, 3, 2], tf.uint8),
               "instruction": tf.TensorSpec([5], tf.int32)}


def test_the_trajectory_spec_has_t_plus_one_steps_of_each_field():
    spec = trajectory_spec(OBSERVATION, num_actions=6, unroll_length=7)
    assert spec.observation["frame"].shape == (8, 4, 3, 2)
    assert spec.observation["frame"].dtype == tf.uint8
    assert spec.observation["instruction"].shape == (8, 5)
    assert (spec.action.shape, spec.action.dtype) == ((8,), tf.int32)
    assert (spec.reward.dtype, spec.discount.dtype, spec.episode_start.dtype) == (
        tf.float32, tf.float32, tf.bool)
    assert spec.behaviour_logits.shape == (8, 6)
    time_major = batched(spec, 3)
    assert time_major.behaviour_logits.shape == (8, 3, 6)
    for before, after in zip(tf.nest.flatten(spec), tf.nest.flatten(time_major)):
        assert (after.dtype, after.name) == (before.dtype, before.name)
    assert batched(spec, 3, time_major=False).observation["frame"].shape == (3, 8, 4, 3, 2)


def test_flat_names_have_one_fixed_order():
    initial = LSTMState(h=np.zeros([1, 2], np.float32), c=np.ones([1, 2], np.float32))
    wire = unroll_wire_spec(OBSERVATION, 6, 7, initial)
    assert list(wire) == ["observation/frame", "observation/instruction", "action", "reward",
                          "discount", "episode_start", "behaviour_logits", "core_state/h",
                          "core_state/c"]
    assert wire["core_state/h"].shape == (2,)  # one environment's, no batch dim
    assert core_state_spec(initial).c.shape == (2,)


def test_dm_env_specs_become_tensor_specs_bounds_and_a_task_count():
    spec = {"frame": dm_specs.BoundedArray([2, 2, 1], np.uint8, 0, 255, name="frame"),
            "task": dm_specs.BoundedArray((), np.int32, 0, 56, name="task"),
            "free": dm_specs.Array([3], np.float32, name="free")}
    tensors = tensor_specs(spec)
    assert tensors["frame"] == tf.TensorSpec([2, 2, 1], tf.uint8, name="frame")
    assert tensors["free"].dtype == tf.float32
    bounds = observation_bounds(spec)
    assert set(bounds) == {"frame", "task"} and bounds["task"] == (0, 56)
    assert num_tasks(spec) == 57 and num_tasks(bounds) == 57
    assert num_tasks({"frame": spec["frame"]}) is None
