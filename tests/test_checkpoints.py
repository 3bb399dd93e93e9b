"""Checkpoint round trip: weights, optimiser state, learner step and frames come back."""

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.checkpoints import Checkpointer, latest_checkpoint, restore_agent
from impala_tf.networks import Agent
from impala_tf.optimizers import make_optimizer
from impala_tf.synthetic import synthetic_batch
from impala_tf.train_step import TrainStep

SPEC = {"frame": tf.TensorSpec([24, 24, 1], tf.uint8)}


def _learner():
    agent = Agent(3, SPEC, lstm_size=8)
    return agent, TrainStep(agent, make_optimizer(1e6, 10))


def test_round_trip_and_resume(tmp_path):
    agent, step = _learner()
    batch = synthetic_batch(agent, SPEC, 4, 2)
    for _ in range(3):
        step(batch)
    saver = Checkpointer(str(tmp_path), agent, step.optimizer)
    saver.learner_step.assign(3)
    saver.env_frames.assign(3 * 40)
    path = saver.save()
    assert path.endswith("ckpt-3") and latest_checkpoint(str(tmp_path)) == path

    fresh_agent, fresh_step = _learner()
    resumed = Checkpointer(str(tmp_path), fresh_agent, fresh_step.optimizer)
    assert resumed.restore_latest() == path
    assert int(resumed.learner_step.numpy()) == 3 and int(resumed.env_frames.numpy()) == 120
    assert int(fresh_step.optimizer.iterations.numpy()) == 3
    for a, b in zip(agent.get_weights(), fresh_agent.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(step.optimizer.variables, fresh_step.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Resumed training continues exactly where the original would have.
    np.testing.assert_allclose(float(step(batch)["total_loss"]),
                               float(fresh_step(batch)["total_loss"]), rtol=1e-5)


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    agent, step = _learner()
    assert Checkpointer(str(tmp_path), agent, step.optimizer).restore_latest() is None
    assert latest_checkpoint(str(tmp_path)) is None


def test_evaluation_restores_only_the_agent(tmp_path):
    agent, step = _learner()
    Checkpointer(str(tmp_path), agent, step.optimizer).save()
    other = Agent(3, SPEC, lstm_size=8)
    restore_agent(other, latest_checkpoint(str(tmp_path)))
    for a, b in zip(agent.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("torso", ["shallow", "deep", "mlp"])
def test_every_agent_variable_is_in_the_checkpoint(tmp_path, torso):
    """Layers kept in Python lists escape tf.train.Checkpoint: guard every architecture."""
    spec = dict(SPEC, instruction=tf.TensorSpec([6], tf.int32))
    agent = Agent(3, spec, torso=torso, lstm_size=8)
    Checkpointer(str(tmp_path), agent).save()
    other = Agent(3, spec, torso=torso, lstm_size=8)  # another random initialisation
    restore_agent(other, latest_checkpoint(str(tmp_path)))
    assert len(agent.variables) == len(other.variables)
    for a, b in zip(agent.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
