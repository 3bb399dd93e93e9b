"""Central inference's device step (`InferenceStep`) against the actors' `BatchedPolicy`: the
same seed draws the same actions, the core states kept in the device table are the ones an
actor carries on the host, fresh rows start from the initial state, and the padding's row
never leaks into an actor's."""

import numpy as np
import tensorflow as tf

from impala_tf.acting.policy import BatchedPolicy
from impala_tf.distribute import make_strategy
from impala_tf.envs.catch import make_catch
from impala_tf.learning.inference_step import InferenceStep
from impala_tf.networks import Agent
from impala_tf.specs import tensor_specs

K = 4


def _agent(env, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        return Agent(3, tensor_specs(env.observation_spec()), torso="mlp", use_lstm=True,
                     lstm_size=6)


def _compare(step, env, agent, rounds=12, rows=np.arange(K, 2 * K, dtype=np.int32)):
    """Plays `env` with `step` on `rows` and with an actor's BatchedPolicy of the same seed;
    asserts equal actions, logits and core states at every step."""
    policy = BatchedPolicy(agent, seed=11)
    timestep, prev = env.reset(), np.zeros(K, np.int32)
    state = policy.initial_state(K)
    fresh = np.ones(K, bool)
    for _ in range(rounds):
        expected, state = policy(prev, timestep, state)
        actions, logits = step(prev, timestep.reward, timestep.first(), timestep.observation,
                               rows, fresh)
        np.testing.assert_array_equal(actions, expected.actions)
        np.testing.assert_allclose(logits, expected.policy_logits, rtol=1e-5, atol=1e-6)
        fresh = np.zeros(K, bool)
        table = step.read_rows(rows, fresh)
        np.testing.assert_allclose(table.h, state.h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(table.c, state.c, rtol=1e-5, atol=1e-6)
        prev = actions
        timestep = env.step(actions)
    assert np.abs(np.asarray(state.h)).max() > 0


def test_the_device_step_samples_and_carries_state_as_an_actor_does():
    env = make_catch(K, seed=3)
    agent = _agent(env)
    step = InferenceStep(agent, num_rows=3 * K, seed=11)
    _compare(step, env, agent)


def test_under_a_mirrored_strategy_with_xla_on_its_first_device():
    env = make_catch(K, seed=4)
    agent = _agent(env, make_strategy("mirrored", num_cpu_devices=2))
    step = InferenceStep(agent, num_rows=3 * K, seed=11,
                         strategy=make_strategy("mirrored", num_cpu_devices=2), jit_compile=True)
    assert step.jit_compile and step.device.endswith("CPU:0")
    _compare(step, env, agent)
    assert step._step.experimental_get_tracing_count() == 1


def test_fresh_rows_start_from_the_initial_state_and_padding_stays_in_its_row():
    env = make_catch(K, seed=5)
    agent = _agent(env)
    step = InferenceStep(agent, num_rows=2 * K, greedy=True)
    timestep = env.reset()
    rows = np.arange(K, dtype=np.int32)
    step(np.zeros(K, np.int32), timestep.reward, timestep.first(), timestep.observation, rows,
         np.ones(K, bool))
    before = step.read_rows(rows, np.zeros(K, bool))
    assert np.abs(before.h).max() > 0
    assert np.abs(step.read_rows(rows, np.ones(K, bool)).h).max() == 0  # fresh: initial
    # Two real rows of the second actor and two padded ones, which all write the padding row.
    padded_rows = np.array([K, K + 1, step.padding_row, step.padding_row], np.int32)
    step(np.zeros(K, np.int32), timestep.reward, timestep.first(), timestep.observation, padded_rows,
         np.array([True, True, True, True]))
    np.testing.assert_array_equal(step.read_rows(rows, np.zeros(K, bool)).h, before.h)
    untouched = step.read_rows(np.arange(K + 2, 2 * K, dtype=np.int32), np.zeros(2, bool))
    assert np.abs(untouched.h).max() == 0
    assert step.table.h.shape == (2 * K + 1, 6)
