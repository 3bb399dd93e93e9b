"""BatchedPolicy: actions drawn from the agent's policy (frequencies against the softmax of
known logits), greedy actions the arg-max, reproducible with a seed, and the step's logits
and baseline the agent's."""

import numpy as np
import tensorflow as tf

from impala_tf.acting.policy import BatchedPolicy
from impala_tf.envs.catch import make_catch
from impala_tf.networks import Agent
from impala_tf.specs import tensor_specs

LOGITS = np.log(np.array([0.5, 0.3, 0.2], np.float32))


def _fixed_agent(env, baseline=0.75):
    """An agent whose policy ignores its input: logits LOGITS (plus a constant), value
    `baseline`."""
    agent = Agent(3, tensor_specs(env.observation_spec()), torso="mlp", use_lstm=False)
    agent.policy_head.kernel.assign(tf.zeros_like(agent.policy_head.kernel))
    agent.policy_head.bias.assign(LOGITS)
    agent.baseline_head.kernel.assign(tf.zeros_like(agent.baseline_head.kernel))
    agent.baseline_head.bias.assign([baseline])
    return agent


def _draws(policy, env, rounds):
    timestep, prev = env.reset(), np.zeros(env.num_envs, np.int32)
    state = policy.initial_state(env.num_envs)
    actions = []
    for _ in range(rounds):
        step, state = policy(prev, timestep, state)
        actions.append(step.actions)
    return np.concatenate(actions), step


def test_sampled_actions_follow_the_policys_probabilities():
    env = make_catch(64)
    actions, step = _draws(BatchedPolicy(_fixed_agent(env), seed=1), env, rounds=200)
    counts = np.bincount(actions, minlength=3)
    n = counts.sum()
    probabilities = np.array([0.5, 0.3, 0.2])
    sigma = np.sqrt(n * probabilities * (1 - probabilities))
    assert np.all(np.abs(counts - n * probabilities) < 4 * sigma), counts / n
    np.testing.assert_allclose(step.policy_logits, np.tile(LOGITS, (64, 1)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(step.baseline, np.full(64, 0.75), rtol=1e-6)


def test_greedy_takes_the_most_probable_action():
    env = make_catch(8)
    actions, _ = _draws(BatchedPolicy(_fixed_agent(env), greedy=True), env, rounds=5)
    assert set(actions.tolist()) == {0}


def test_a_seed_makes_the_draws_reproducible():
    env = make_catch(16)
    agent = _fixed_agent(env)
    first, _ = _draws(BatchedPolicy(agent, seed=7), env, rounds=10)
    again, _ = _draws(BatchedPolicy(agent, seed=7), env, rounds=10)
    other, _ = _draws(BatchedPolicy(agent, seed=8), env, rounds=10)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    generator = tf.random.Generator.from_seed(7)
    given, _ = _draws(BatchedPolicy(agent, rng=generator), env, rounds=10)
    np.testing.assert_array_equal(given, first)  # the generator passed in is the one used
