"""UnrollBuilder: K environments' T+1 steps cut into K unrolls, each field of each
environment checked against values written out by hand, core state included."""

import numpy as np

from impala_tf.acting.unroll_builder import UnrollBuilder
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
    first, second = builder.unrolls(core)

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
    (unroll,) = builder.unrolls(())
    np.testing.assert_array_equal(unroll["observation/frame"].reshape(-1), [3, 4])
    assert not any(name.startswith("core_state/") for name in unroll)
