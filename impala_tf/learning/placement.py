"""Where the learner's work runs: whether the train step stacks frames on the device, and
which parts of the step XLA compiles under a strategy."""

from typing import Tuple

import tensorflow as tf


def frames_on_device(stack_frames_on: str, strategy: tf.distribute.Strategy) -> bool:
    """Whether the train step stacks frames on the learner's device (`Learner`'s
    `stack_frames_on`: 'host', 'device' or 'auto')."""
    if stack_frames_on not in ("auto", "host", "device"):
        raise ValueError(f"ActorEndpoint.stack_frames_on = {stack_frames_on!r}: expected 'auto', "
                         "'host' or 'device'.")
    if stack_frames_on != "auto":
        return stack_frames_on == "device"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's placement, GPU first
        devices = ()
    return (isinstance(strategy, tf.distribute.TPUStrategy)
            or any("GPU" in device.upper() for device in devices)
            or bool(tf.config.list_logical_devices("GPU")))


def xla_plan(strategy: tf.distribute.Strategy, jit_compile: bool) -> Tuple[bool, bool]:
    """(XLA-compile the whole step, XLA-compile each replica's gradients) for `strategy`."""
    if not jit_compile or isinstance(strategy, tf.distribute.TPUStrategy):
        return False, False
    if strategy.num_replicas_in_sync == 1:
        return True, False
    return False, True
