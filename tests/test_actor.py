"""The actor's unrolls, checked against Catch's dynamics: the layout (what led to each
observation), step 0 repeating the previous unroll's last step, the core state carried
across unrolls, the policy version; an actor that outlives its learner."""

import queue
import sys
import threading
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

import fake_deepmind_lab
from impala_tf import config
from impala_tf.acting.actor import Actor
from impala_tf.envs.factory import make_environment
from impala_tf.learning.process import learner_process
from impala_tf.networks import AgentInput
from impala_tf.specs import tensor_specs

T, K = 6, 3


@pytest.fixture
def rounds(tmp_path):
    config.parse_config(["catch.gin"], [f"RunConfig.unroll_length = {T}", "Agent.use_lstm = True",
                                        "Agent.lstm_size = 8", "Actor.num_envs = 3"])
    env = make_environment(1)
    learner = learner_process(tensor_specs(env.observation_spec()), 3, str(tmp_path))
    learner.endpoint.batcher.stop()  # the test reads the unrolls from the queue itself
    actor = Actor(learner.address, actor_index=0)
    actor.run(max_unrolls=3)
    actor.close()
    unrolls = [learner.endpoint.unrolls.get(timeout=30) for _ in range(3 * K)]
    learner.close()
    yield actor, [unrolls[i * K:(i + 1) * K] for i in range(3)]
    gin.clear_config()


def _trajectory(unroll):
    return unroll.trajectory


def _paddle(frame):
    return int(np.flatnonzero(frame[-1, :, 0] == 255)[0])


def _ball_row(frame):
    rows = np.flatnonzero((frame[:-1, :, 0] == 255).any(axis=1))
    return int(rows[0]) if len(rows) else frame.shape[0] - 1


def test_shapes_versions_and_the_first_step(rounds):
    actor, by_round = rounds
    first = _trajectory(by_round[0][0])
    assert first.observation["frame"].shape == (T + 1, 10, 5, 1)
    assert first.behaviour_logits.shape == (T + 1, 3)
    assert first.episode_start[0]  # the very first observation starts an episode
    assert all(u.policy_version == 0 and u.actor_id == 0 for r in by_round for u in r)


def test_actions_and_rewards_lead_to_each_observation(rounds):
    _, by_round = rounds
    checked = 0
    for unrolls in by_round:
        for unroll in unrolls:
            traj = _trajectory(unroll)
            frames = traj.observation["frame"]
            for t in range(1, T + 1):
                if traj.episode_start[t]:
                    # The step after LAST: a new episode, nothing carried over.
                    assert traj.reward[t] == 0 and traj.discount[t] == 1
                    assert _ball_row(frames[t]) == 0
                    continue
                # Catch moves the paddle by action - 1: action[t] led to observation t.
                want = int(np.clip(_paddle(frames[t - 1]) + traj.action[t] - 1, 0, 4))
                assert _paddle(frames[t]) == want
                landed = _ball_row(frames[t]) == 9
                assert traj.discount[t] == (0.0 if landed else 1.0)
                assert (traj.reward[t] != 0) == landed
                checked += 1
    assert checked > 20


def test_step_zero_repeats_the_previous_unrolls_last_step(rounds):
    _, by_round = rounds
    for previous, current in zip(by_round, by_round[1:]):
        for k in range(K):
            before, after = _trajectory(previous[k]), _trajectory(current[k])
            for name in ("action", "reward", "discount", "episode_start", "behaviour_logits"):
                np.testing.assert_array_equal(getattr(before, name)[T], getattr(after, name)[0])
            np.testing.assert_array_equal(before.observation["frame"][T],
                                          after.observation["frame"][0])


def test_core_state_carries_across_unrolls(rounds):
    actor, by_round = rounds
    agent = actor.agent
    for k in range(K):
        unroll, following = by_round[0][k], by_round[1][k]
        traj = _trajectory(unroll)
        assert isinstance(unroll.core_state, type(agent.initial_state(1)))  # its structure
        state = tf.nest.map_structure(lambda leaf: leaf[None], unroll.core_state)
        # Replay steps 0..T-1 with the agent: the state before step T is the next unroll's
        # initial state.
        inputs = AgentInput(traj.action[:T, None], traj.reward[:T, None],
                            traj.episode_start[:T, None],
                            {"frame": traj.observation["frame"][:T, None]})
        _, final = agent.unroll(tf.nest.map_structure(tf.convert_to_tensor, inputs), state)
        np.testing.assert_allclose(final.h.numpy()[0], following.core_state.h, atol=1e-5)
        np.testing.assert_allclose(final.c.numpy()[0], following.core_state.c, atol=1e-5)
    assert np.abs(by_round[1][0].core_state.h).max() > 0


def test_the_actor_runs_on_dmlab(tmp_path, monkeypatch):
    """On the fake deepmind_lab: frames, instruction tokens and the 9 actions travel."""
    monkeypatch.setitem(sys.modules, "deepmind_lab", fake_deepmind_lab)
    config.parse_config(["dmlab/single_task_deep.gin"], [
        "RunConfig.unroll_length = 4", "Agent.torso = 'shallow'", "Agent.lstm_size = 8",
        "Actor.num_envs = 2", "make_dmlab.level = 'language_select_described_object'"])
    try:
        env = make_environment(1)
        learner = learner_process(tensor_specs(env.observation_spec()), 9, str(tmp_path))
        learner.endpoint.batcher.stop()
        actor = Actor(learner.address, actor_index=0)
        actor.run(max_unrolls=1)
        actor.close()
        unrolls = [learner.endpoint.unrolls.get(timeout=30) for _ in range(2)]
        learner.close()
    finally:
        gin.clear_config()
    fields = unrolls[0].flat()
    assert fields["observation/frame"].shape == (5, 72, 96, 3)
    assert fields["observation/instruction"].shape == (5, 16)
    assert (fields["observation/instruction"] > 0).sum(axis=1).min() == 4  # 4 words each step
    assert fields["behaviour_logits"].shape == (5, 9)
    assert fields["action"].max() < 9


def test_the_actor_waits_out_a_learner_restart_and_loads_the_new_parameters(tmp_path):
    """The learner goes away and another takes its port, at the same version (0) but with
    other weights: the actor keeps its environments, reconnects, and acts with the new ones."""
    config.parse_config(["catch.gin"], ["RunConfig.unroll_length = 4", "Actor.num_envs = 2",
                                        "Actor.reconnect_backoff_seconds = 0.1",
                                        "Actor.max_reconnect_backoff_seconds = 0.5"])
    specs = tensor_specs(make_environment(1).observation_spec())
    stop = threading.Event()
    try:  # the first learner binds a port of its own; the second takes the same one
        first = learner_process(specs, 3, str(tmp_path / "a"), server_address="127.0.0.1:0")
        address = first.address
        first.endpoint.batcher.stop()
        actor = Actor(address, actor_index=0)
        env = actor.env
        thread = threading.Thread(target=actor.run, args=(stop,))
        thread.start()
        for _ in range(4):
            first.endpoint.unrolls.get(timeout=30)
        first.close()
        time.sleep(1.0)  # the actor finds the learner gone
        assert thread.is_alive()
        second = learner_process(specs, 3, str(tmp_path / "b"), server_address=address)
        second.endpoint.batcher.stop()
        unroll = second.endpoint.unrolls.get(timeout=60)
        deadline = time.time() + 30
        while actor.incarnation != second.learner.parameters.incarnation and time.time() < deadline:
            time.sleep(0.05)
        assert actor.incarnation == second.learner.parameters.incarnation != first.learner.parameters.incarnation
        assert actor.policy_version == 0 and unroll.actor_id == 0
        for mine, theirs in zip(actor.agent.variables, second.agent.variables):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
        assert not np.array_equal(first.agent.variables[0].numpy(),
                                  second.agent.variables[0].numpy())
        assert actor.env is env and thread.is_alive()
        # Still acting: the actor may be up to a full queue (plus what is in flight) ahead of
        # us and blocked on it, so drain until it has stepped again rather than a fixed count.
        steps = actor.steps_taken
        deadline = time.time() + 30
        while actor.steps_taken <= steps and time.time() < deadline:
            try:
                second.endpoint.unrolls.get(timeout=1)
            except queue.Empty:
                pass
        assert actor.steps_taken > steps
    finally:
        stop.set()
        thread.join(30)
        actor.close(flush=False)
        second.close()
        gin.clear_config()
    assert not thread.is_alive()
