"""evaluate: the episode protocol on a policy with a known return, and the
`python -m impala_tf.evaluate` command on a saved checkpoint (the scores table: test_scores)."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from impala_tf import config, evaluate, gin_utils
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.learning import checkpoints
from impala_tf.envs.catch import make_catch
from impala_tf.envs.factory import make_environment
from impala_tf.networks import Agent
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.specs import tensor_specs


def _always_stay_agent(env):
    """An agent whose policy ignores the frame and stays put (action 1)."""
    agent = Agent(3, tensor_specs(env.observation_spec()), torso="mlp", use_lstm=False)
    head = agent.policy_head
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign([0.0, 50.0, 0.0])
    return agent


def test_a_known_policy_scores_its_expected_return():
    env = make_catch(8, seed=3)
    policy = BatchedPolicy(_always_stay_agent(env), seed=0)
    episodes = evaluate.run_episodes(policy, env, 400)
    assert len(episodes) == 400
    # Staying catches only balls that fall in the paddle's column: 1/5 -> E[return] = -0.6.
    returns = np.array([e.episode_return for e in episodes])
    assert returns.mean() == pytest.approx(-0.6, abs=0.1)
    # One episode per environment per round.
    per_env = np.bincount([e.env_index for e in episodes], minlength=8)
    assert (per_env == 50).all()


def test_greedy_policy_takes_the_most_probable_action():
    env = make_catch(4, seed=0)
    policy = BatchedPolicy(_always_stay_agent(env), greedy=True)
    step, _ = policy(np.zeros(4, np.int32), env.reset(), ())
    np.testing.assert_array_equal(step.actions, [1, 1, 1, 1])
    assert step.policy_logits.shape == (4, 3) and step.baseline.shape == (4,)


def test_evaluate_command_on_a_checkpoint(tmp_path):
    config.parse_config(["catch.gin"])
    env = make_environment(1)
    agent = build_agent(tensor_specs(env.observation_spec()), 3)
    head = agent.policy_head  # the policy of the checkpoint: always stay (action 1)
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign([0.0, 50.0, 0.0])
    step = build_train_step(agent)
    saver = checkpoints.Checkpointer(str(tmp_path), agent, step.optimizer)
    saver.learner_step.assign(12)
    saver.save()
    gin_utils.write_operative_config(str(tmp_path))
    gin.clear_config()
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.evaluate", f"--logdir={tmp_path}",
         "--num_episodes=40", "--num_envs=4", "--seed=1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt-12" in result.stdout and "catch" in result.stdout
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["rows"][0]["name"] == "catch" and report["rows"][0]["episodes"] == 40
    # Independently: environment i of the evaluation has seed 1 + i (--seed=1), so its
    # rounds' balls fall in columns rng.integers(5) of default_rng(1 + i); staying (the
    # paddle starts in column 2) catches exactly those in column 2.
    rngs = [np.random.default_rng(1 + i) for i in range(4)]
    returns = [1.0 if rng.integers(5) == 2 else -1.0 for rng in rngs for _ in range(10)]
    assert report["rows"][0]["mean_return"] == pytest.approx(np.mean(returns))
    assert (tmp_path / "evaluation.csv").read_text().startswith("name,episodes,mean_return")


def test_evaluate_without_a_checkpoint_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.evaluate", f"--logdir={tmp_path}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "No checkpoint" in result.stderr
