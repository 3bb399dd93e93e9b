"""Catch's dynamics and the sequential batched environment's dm_env contract."""

import dm_env
import numpy as np
import pytest

from impala_tf.envs.base import FIRST, LAST, MID
from impala_tf.envs.catch import Catch, make_catch


def _positions(timestep):
    frame = timestep.observation["frame"][..., 0]
    ball = np.argwhere(frame[:-1] == 255)
    paddle = np.flatnonzero(frame[-1] == 255)
    return (tuple(ball[0]) if len(ball) else None), paddle


def test_ball_falls_one_row_per_step_and_paddle_moves():
    env = Catch(rows=10, columns=5, seed=1)
    timestep = env.reset()
    assert timestep.observation["frame"].shape == (10, 5, 1)
    assert timestep.observation["frame"].dtype == np.uint8
    (row, column), paddle = _positions(timestep)
    assert row == 0 and list(paddle) == [2]
    timestep = env.step(0)  # left
    (row2, column2), paddle = _positions(timestep)
    assert (row2, column2) == (1, column) and list(paddle) == [1]
    env.step(0)
    timestep = env.step(0)
    assert list(_positions(timestep)[1]) == [0]  # stops at the wall
    timestep = env.step(2)
    assert list(_positions(timestep)[1]) == [1]


def _play(env, policy):
    timestep = env.reset()
    steps, total = 0, 0.0
    while not timestep.last():
        timestep = env.step(policy(timestep))
        total += timestep.reward
        steps += 1
    return total, steps, timestep


def _follow_the_ball(timestep):
    frame = timestep.observation["frame"][..., 0]
    ball_column = np.argwhere(frame[:-1] == 255)[0][1]
    paddle = np.flatnonzero(frame[-1] == 255)[0]
    return int(np.sign(ball_column - paddle) + 1)


def test_optimal_play_always_catches_and_staying_misses_sometimes():
    env = Catch(seed=0)
    for _ in range(20):
        total, steps, last = _play(env, _follow_the_ball)
        assert total == 1.0 and steps == 9 and last.discount == 0.0
    misses = sum(_play(env, lambda t: 1)[0] == -1.0 for _ in range(50))
    assert 20 < misses < 50  # the ball lands elsewhere than the centre 4 times in 5


def test_bad_action_is_rejected():
    env = Catch()
    env.reset()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        env.step(3)


def test_batched_contract_last_then_first_and_episode_stats():
    env = make_catch(3, seed=5)
    assert env.num_envs == 3 and env.action_spec().num_values == 3
    timestep = env.reset()
    assert (timestep.step_type == FIRST).all()
    kinds = []
    for _ in range(9):
        timestep = env.step(np.ones(3, np.int64))
        kinds.append(timestep.step_type.copy())
    assert (np.array(kinds[:-1]) == MID).all() and (kinds[-1] == LAST).all()
    assert (timestep.discount == 0).all() and set(timestep.reward) <= {-1.0, 1.0}
    stats = env.pop_finished_episodes()
    assert len(stats) == 3 and [s.episode_return for s in stats] == list(timestep.reward)
    assert all(s.episode_frames == 9 and s.level == "catch" for s in stats)
    assert env.pop_finished_episodes() == []
    restarted = env.step(np.zeros(3, np.int64))  # actions ignored: every env restarts
    assert (restarted.step_type == FIRST).all() and (restarted.reward == 0).all()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2, np.int64))


def test_catch_is_a_dm_env():
    env = Catch()
    assert isinstance(env, dm_env.Environment)
    assert env.reset().step_type == dm_env.StepType.FIRST
