"""UnrollBuilder: K environments' T+1 steps cut into K unrolls, each field of each
environment checked against values written out by hand, core state included; stacked
frames leave each frame once, restarting where the pixels (or the caller) say."""

import numpy as np
import pytest

from impala_tf.acting.unroll_builder import UnrollBuilder
from impala_tf.frames import PackedStack
from impala_tf.envs.base import FIRST, LAST, MID, BatchedTimeStep
from impala_tf.networks.lstm import LSTMState


def _timestep(step_types, rewards, discounts, frames):
    return BatchedTimeStep(np.array(step_types, np.int8), np.array(rewards, np.float32),
                           np.array(discounts, np.float32),
                           {"frame": np.array(frames, np.uint8)[:, None, None, None]})


def test_each_environments_unroll_holds_its_own_steps_in_order():
    """K=2, T=2. Environment 0 ends an episode at step 1 and restarts at step 2; its
    neighbour runs on. Every field of both unrolls is compared with the expected arrays."""
    builder = UnrollBuilder(num_envs=2, unroll_length=2, num_actions=3)
    builder.start(_timestep([MID, MID], [0.0, 0.0], [1, 1], [10, 20]),
                  prev_actions=np.array([2, 1]), prev_logits=np.array([[1, 2, 3], [4, 5, 6]]))
    assert not builder.full
    builder.append(_timestep([LAST, MID], [1.0, -0.5], [0, 1], [11, 21]),
                   np.array([0, 2]), np.array([[7, 8, 9], [10, 11, 12]]))
    builder.append(_timestep([FIRST, MID], [0.0, 0.25], [1, 1], [12, 22]),
                   np.array([1, 1]), np.array([[13, 14, 15], [16, 17, 18]]))
    assert builder.full
    core = LSTMState(h=np.array([[0.1, 0.2], [0.3, 0.4]], np.float32),
                     c=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    first, second = builder.unrolls(core, policy_version=9, actor_id=4)
    assert [(u.policy_version, u.actor_id) for u in (first, second)] == [(9, 4)] * 2
    assert isinstance(first.core_state, LSTMState)

    expected = {
        0: {"observation/frame": [10, 11, 12], "action": [2, 0, 1],
            "reward": [0.0, 1.0, 0.0], "discount": [1, 0, 1],
            "episode_start": [False, False, True],
            "behaviour_logits": [[1, 2, 3], [7, 8, 9], [13, 14, 15]],
            "core_state/h": [0.1, 0.2], "core_state/c": [1.0, 2.0]},
        1: {"observation/frame": [20, 21, 22], "action": [1, 2, 1],
            "reward": [0.0, -0.5, 0.25], "discount": [1, 1, 1],
            "episode_start": [False, False, False],
            "behaviour_logits": [[4, 5, 6], [10, 11, 12], [16, 17, 18]],
            "core_state/h": [0.3, 0.4], "core_state/c": [3.0, 4.0]},
    }
    for k, unroll in ((0, first), (1, second)):
        unroll = unroll.flat()
        assert sorted(unroll) == sorted(expected[k])
        for name, values in expected[k].items():
            got = unroll[name]
            if name == "observation/frame":
                assert got.shape == (3, 1, 1, 1) and got.dtype == np.uint8
                got = got.reshape(-1)
            np.testing.assert_array_equal(got, np.asarray(values, got.dtype),
                                          err_msg=f"env {k} {name}")
        assert unroll["action"].dtype == np.int32 and unroll["reward"].dtype == np.float32
        assert unroll["discount"].dtype == np.float32
        assert unroll["behaviour_logits"].dtype == np.float32
        assert unroll["episode_start"].dtype == bool


def test_start_begins_a_new_unroll_and_an_empty_core_state_has_no_fields():
    builder = UnrollBuilder(num_envs=1, unroll_length=1, num_actions=2)
    builder.start(_timestep([FIRST], [0], [1], [1]), np.array([0]), np.zeros([1, 2]))
    builder.append(_timestep([MID], [0.5], [1], [2]), np.array([1]), np.ones([1, 2]))
    assert builder.full
    builder.start(_timestep([MID], [0], [1], [3]), np.array([1]), np.ones([1, 2]))
    assert not builder.full  # the old steps are gone
    builder.append(_timestep([MID], [0], [1], [4]), np.array([0]), np.zeros([1, 2]))
    (unroll,) = builder.unrolls((), 0, 0)
    assert unroll.core_state == ()
    unroll = unroll.flat()
    np.testing.assert_array_equal(unroll["observation/frame"].reshape(-1), [3, 4])
    assert not any(name.startswith("core_state/") for name in unroll)


def _stacked(frames_by_env):
    """[K, 1, 1, S] stacks: each environment's last S frames (ints, oldest first)."""
    return np.array(frames_by_env, np.uint8)[:, None, None, :]


@pytest.mark.parametrize("told", [False, True])
def test_stacked_frames_leave_each_once_restarting_where_the_stacks_do(told):
    """K=2, S=2, T=3. Environment 0's stack shifts every step; environment 1's restarts at
    step 2 (a new episode: older frame 0). Decided from the pixels, or told per step (as
    central inference's step messages say); either way each unroll's stacks are rebuilt
    exactly from its frames."""
    steps = [_stacked([[1, 2], [5, 6]]), _stacked([[2, 3], [6, 7]]),
             _stacked([[3, 4], [0, 8]]), _stacked([[4, 9], [8, 1]])]
    restarts = [None, [False, False], [False, True], [False, False]]
    builder = UnrollBuilder(num_envs=2, unroll_length=3, num_actions=2, stacked={"frame": 1})
    for t, stacks in enumerate(steps):
        timestep = BatchedTimeStep(np.full(2, MID, np.int8), np.zeros(2, np.float32),
                                   np.ones(2, np.float32), {"frame": stacks})
        if t == 0:
            builder.start(timestep, np.zeros(2, np.int32), np.zeros([2, 2]))
        else:
            builder.append(timestep, np.zeros(2, np.int32), np.zeros([2, 2]),
                           {"frame": np.array(restarts[t])} if told else None)
    unrolls = builder.unrolls((), 0, 0)
    for env, unroll in enumerate(unrolls):
        packed = unroll.trajectory.observation["frame"]
        assert isinstance(packed, PackedStack)
        assert np.flatnonzero(packed.restart).tolist() == ([] if env == 0 else [2])
        np.testing.assert_array_equal(packed.newest.reshape(-1), [s[env, 0, 0, -1] for s in steps])
        np.testing.assert_array_equal(np.asarray(packed), np.stack([s[env] for s in steps]))
    assert unrolls[1].trajectory.observation["frame"].restarted.reshape(-1).tolist() == [0]
