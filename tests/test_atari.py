"""Atari on real ROMs through ale-py's vector interface, with the paper's preprocessing."""

import numpy as np
import pytest

from impala_tf.envs.atari import AtariBatchedEnv, all_games, default_ale_threads, resolve_game
from impala_tf.envs.base import FIRST, LAST, MID
from impala_tf.scores import atari_references


def test_all_57_games_are_available():
    assert set(atari_references()) <= set(all_games())


@pytest.mark.parametrize("name, want", [
    ("pong", "pong"), ("Pong", "pong"), ("PongNoFrameskip-v4", "pong"),
    ("MsPacman", "ms_pacman"), ("ALE/Breakout-v5", "breakout")])
def test_game_names_resolve(name, want):
    assert resolve_game(name) == want


def test_a_typo_names_the_nearest_game():
    with pytest.raises(ValueError, match="Did you mean 'breakout'"):
        AtariBatchedEnv(1, "breakuot")


def test_frames_shapes_and_the_minimal_action_set():
    env = AtariBatchedEnv(3, "pong", seed=0)
    assert env.observation_spec()["frame"].shape == (84, 84, 4)
    assert env.action_spec().num_values == 6
    assert env.frames_per_step == 4
    first = env.reset()
    assert first.observation["frame"].shape == (3, 84, 84, 4)
    assert first.observation["frame"].dtype == np.uint8
    assert (first.step_type == FIRST).all() and (first.discount == 1).all()
    nxt = env.step(np.array([0, 1, 2]))
    assert (nxt.step_type == MID).all()
    # A stack of 4, newest last: the new stack is the old one shifted by one frame.
    np.testing.assert_array_equal(nxt.observation["frame"][..., :3],
                                  first.observation["frame"][..., 1:])
    assert first.observation["frame"].max() > 0
    assert AtariBatchedEnv(1, "pong", full_action_space=True).action_spec().num_values == 18


def test_no_op_starts():
    env = AtariBatchedEnv(16, "pong", seed=0, noop_max=30)
    env.reset()
    assert env.start_frames.min() >= 0 and env.start_frames.max() <= 30
    assert len(set(env.start_frames.tolist())) > 3  # random per game
    plain = AtariBatchedEnv(4, "pong", seed=0, noop_max=0)
    plain.reset()
    assert (plain.start_frames == 0).all()


def _play_one_game(env, rng, max_steps=5000):
    """Random play of env 0 until its game ends; returns its step types, discounts, rewards."""
    kinds, discounts, rewards, stats = [], [], [], []
    env.reset()
    for _ in range(max_steps):
        ts = env.step(rng.integers(0, env.action_spec().num_values, env.num_envs))
        kinds.append(int(ts.step_type[0]))
        discounts.append(float(ts.discount[0]))
        rewards.append(float(ts.reward[0]))
        stats += env.pop_finished_episodes()
        if stats:  # one environment: its game is over
            break
    return np.array(kinds), np.array(discounts), np.array(rewards), stats


def test_a_lost_life_ends_the_training_episode_not_the_game():
    env = AtariBatchedEnv(1, "breakout", seed=3)
    kinds, discounts, rewards, stats = _play_one_game(env, np.random.default_rng(0))
    lasts = np.flatnonzero(kinds == LAST)
    assert len(lasts) == 5  # Breakout's five lives: five training episodes in one game
    assert (discounts[lasts] == 0).all()
    # Every LAST is followed by a FIRST (the no-op that starts the next training episode).
    assert (kinds[lasts[:-1] + 1] == FIRST).all()
    assert len(stats) == 1 and stats[0].level == "breakout"
    assert stats[0].episode_return == pytest.approx(rewards.sum())
    assert stats[0].episode_frames >= 4 * len(kinds)


def test_evaluation_plays_whole_games():
    env = AtariBatchedEnv(1, "breakout", seed=3, episode_life=False)
    kinds, discounts, _, stats = _play_one_game(env, np.random.default_rng(0))
    assert (kinds == LAST).sum() == 1 and kinds[-1] == LAST and discounts[-1] == 0
    assert len(stats) == 1


def test_the_frame_cap_truncates_with_discount_one():
    env = AtariBatchedEnv(2, "pong", seed=0, max_episode_frames=400)
    env.reset()
    for step in range(1, 200):
        ts = env.step(np.zeros(2, np.int64))
        if ts.step_type[0] == LAST:
            break
    assert ts.step_type[0] == LAST and ts.discount[0] == 1.0
    assert step <= 100
    stats = env.pop_finished_episodes()
    assert stats and all(s.episode_frames <= 400 + 30 for s in stats)
    assert env.step(np.zeros(2, np.int64)).step_type[0] == FIRST


def test_rewards_are_not_clipped_in_the_environment():
    env = AtariBatchedEnv(2, "space_invaders", seed=1, episode_life=False)
    env.reset()
    rng = np.random.default_rng(1)
    rewards = [env.step(rng.integers(0, 6, 2)).reward for _ in range(300)]
    assert np.max(rewards) >= 5.0  # Space Invaders pays 5-30 per alien: unclipped


def test_bad_actions_are_rejected():
    env = AtariBatchedEnv(2, "pong")
    env.reset()
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        env.step(np.array([0, 6]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([0]))


def test_evaluation_starts_games_with_one_to_thirty_no_op_actions():
    def make():
        env = AtariBatchedEnv(8, "breakout", seed=0, episode_life=False, noop_action_starts=30)
        env.reset()
        return env

    env, twin = make(), make()
    counts = env.noops_left.copy()
    assert counts.min() >= 1 and counts.max() <= 30 and len(set(counts.tolist())) > 3
    assert (env.start_frames == 0).all()  # ALE's single-frame no-ops are off
    # During the no-op start FIRE is overridden: frames equal those of a NOOP-only twin.
    for _ in range(int(counts.min())):
        fired = env.step(np.full(8, 1))
        idle = twin.step(np.zeros(8, np.int64))
        np.testing.assert_array_equal(fired.observation["frame"], idle.observation["frame"])
    # Afterwards the agent's actions count: firing launches the ball, idling does not.
    for _ in range(40):
        fired = env.step(np.full(8, 1))
        idle = twin.step(np.zeros(8, np.int64))
    assert (fired.observation["frame"] != idle.observation["frame"]).any()
    assert (env.noops_left == 0).all()


@pytest.mark.parametrize("cores, actors, num_envs, threads", [
    (16, "14", 8, 1),   # a host full of actors: one thread each
    (16, "2", 8, 8),    # cores to spare: at most one per environment
    (16, None, 4, 4),   # an actor alone on its host (no launcher)
    (2, "2", 8, 1),
    (2, "4", 8, 1),     # more actors than cores: still one
])
def test_ale_threads_are_an_actors_share_of_the_cores(monkeypatch, cores, actors, num_envs,
                                                       threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    if actors is None:
        monkeypatch.delenv("IMPALA_TF_ACTORS_ON_HOST", raising=False)
    else:
        monkeypatch.setenv("IMPALA_TF_ACTORS_ON_HOST", actors)
    assert default_ale_threads(num_envs) == threads


def test_a_bad_actor_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("IMPALA_TF_ACTORS_ON_HOST", "many")
    with pytest.raises(ValueError, match="IMPALA_TF_ACTORS_ON_HOST='many'"):
        default_ale_threads(8)
