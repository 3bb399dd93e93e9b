"""Checkpoint round trip: weights, optimiser state, learner step and frames come back; a save
killed midway leaves the previous checkpoint whole."""

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.learning.checkpoints import Checkpointer, latest_checkpoint, restore_agent
from impala_tf.networks import Agent
from impala_tf.learning.optimizers import make_optimizer
from impala_tf.synthetic import synthetic_batch
from impala_tf.learning.train_step import TrainStep

WRITER = os.path.join(os.path.dirname(__file__), "checkpoint_writer_process.py")
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
    # Resumed training continues exactly where the original would have: after one more
    # update on the same batch every weight and every optimiser slot agrees (a slot left
    # at its initial value would move the weights differently).
    assert len(step.optimizer.variables) > len(agent.trainable_variables)  # slots included
    step(batch)
    fresh_step(batch)
    for a, b in zip(agent.get_weights(), fresh_agent.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(step.optimizer.variables, fresh_step.optimizer.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_the_random_generators_resume_where_they_were(tmp_path):
    """The minibatch order's numpy generator and central inference's TensorFlow generator
    continue their sequences after a resume, instead of restarting from their seeds."""
    agent, step = _learner()
    minibatch, policy = np.random.default_rng(3), tf.random.Generator.from_seed(5)
    saver = Checkpointer(str(tmp_path), agent, step.optimizer, minibatch_rng=minibatch,
                         policy_rng=policy)
    minibatch.permutation(8), policy.uniform([4])  # the run draws, then saves
    saver.save()
    expected_order, expected_draw = minibatch.permutation(8), policy.uniform([4]).numpy()
    fresh_minibatch, fresh_policy = np.random.default_rng(3), tf.random.Generator.from_seed(5)
    fresh_agent, fresh_step = _learner()
    Checkpointer(str(tmp_path), fresh_agent, fresh_step.optimizer,
                 minibatch_rng=fresh_minibatch, policy_rng=fresh_policy).restore_latest()
    np.testing.assert_array_equal(fresh_minibatch.permutation(8), expected_order)
    np.testing.assert_array_equal(fresh_policy.uniform([4]).numpy(), expected_draw)


def test_a_checkpoint_from_before_the_generators_still_resumes(tmp_path):
    agent, step = _learner()
    old = Checkpointer(str(tmp_path), agent, step.optimizer)
    old.learner_step.assign(5)
    old.save()
    fresh_agent, fresh_step = _learner()
    resumed = Checkpointer(str(tmp_path), fresh_agent, fresh_step.optimizer,
                           minibatch_rng=np.random.default_rng(1))
    assert resumed.restore_latest().endswith("ckpt-5")
    assert int(resumed.learner_step.numpy()) == 5
    for a, b in zip(agent.get_weights(), fresh_agent.get_weights()):
        np.testing.assert_array_equal(a, b)


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


@pytest.mark.parametrize("torso", ["shallow", "deep", "nature", "mlp"])
def test_every_agent_variable_is_in_the_checkpoint(tmp_path, torso):
    """Layers kept in Python lists escape tf.train.Checkpoint: guard every architecture."""
    spec = dict(SPEC, instruction=tf.TensorSpec([6], tf.int32))
    if torso == "nature":  # three valid convolutions need at least 36x36
        spec["frame"] = tf.TensorSpec([36, 36, 1], tf.uint8)
    agent = Agent(3, spec, torso=torso, lstm_size=8)
    Checkpointer(str(tmp_path), agent).save()
    other = Agent(3, spec, torso=torso, lstm_size=8)  # another random initialisation
    restore_agent(other, latest_checkpoint(str(tmp_path)))
    assert len(agent.variables) == len(other.variables)
    for a, b in zip(agent.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _saves_until_killed(logdir, when):
    """Runs the writer process, kills it (SIGKILL) `when` ("mid-save": as soon as a save's
    temporary folder appears; else after that many seconds past its second save) and returns
    (what it printed on start, the last step it reported saved)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    writer = subprocess.Popen([sys.executable, WRITER, logdir], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        while sum(line.startswith("saved") for line in lines) < 2:
            line = writer.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        directory = os.path.join(logdir, "checkpoints")
        if when == "mid-save":
            deadline = time.time() + 60
            while not glob.glob(os.path.join(directory, "*_temp")) and time.time() < deadline:
                time.sleep(0.001)
            assert glob.glob(os.path.join(directory, "*_temp")), "no save caught in flight"
        else:
            time.sleep(when)
    finally:
        writer.kill()
        out, _ = writer.communicate(timeout=30)
    lines += out.splitlines(True)
    restored = next(line for line in lines if line.startswith("restored"))
    return restored, max(int(line.split()[1]) for line in lines if line.startswith("saved"))


def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL a process in the middle of saving 40 MB checkpoints, five times: each restart
    restores a checkpoint whose every value comes from one save (the writer checks), no older
    than the last save it reported, and the interrupted saves' leftovers are removed."""
    logdir = str(tmp_path)
    last_saved = 0
    for when in ("mid-save", "mid-save", "mid-save", 0.13, 0.31, 0.0):
        restored, saved = _saves_until_killed(logdir, when)
        # The save in flight at the kill may have completed before it could say so.
        assert int(restored.split()[1]) in (last_saved, last_saved + 1), restored
        assert saved >= int(restored.split()[1]) + 2
        last_saved = saved
    assert len(glob.glob(os.path.join(logdir, "checkpoints", "*_temp"))) <= 1  # today's only
