"""placement: where frames are stacked and which parts of the step XLA compiles, for each
strategy and setting."""

import pytest
import tensorflow as tf

from impala_tf.distribute import make_strategy
from impala_tf.learning.placement import frames_on_device, xla_plan


def test_frames_are_stacked_on_the_device_only_where_asked_or_there_is_one():
    default = tf.distribute.get_strategy()
    assert frames_on_device("device", default) and not frames_on_device("host", default)
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert frames_on_device("auto", default) == has_gpu
    assert frames_on_device("auto", make_strategy("mirrored", num_cpu_devices=2)) == has_gpu
    with pytest.raises(ValueError, match="stack_frames_on = 'gpu': expected 'auto'"):
        frames_on_device("gpu", default)


def test_xla_compiles_the_whole_step_of_one_replica_and_each_replicas_gradients_of_several():
    one = tf.distribute.get_strategy()
    two = make_strategy("mirrored", num_cpu_devices=2)
    assert xla_plan(one, True) == (True, False)
    assert xla_plan(two, True) == (False, True)
    assert xla_plan(one, False) == xla_plan(two, False) == (False, False)
