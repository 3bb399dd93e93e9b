"""unroll: the structured unroll inside a process, flattened to the wire's names and back
with the agent's core-state structure, checked leaf by leaf."""

import numpy as np

from impala_tf.networks.lstm import LSTMState
from impala_tf.unroll import (Trajectory, Unroll, fields, flatten_with_paths, from_fields,
                              unflatten_like)


def _trajectory():
    return Trajectory({"instruction": np.arange(3), "frame": np.arange(2)},
                      np.array([1]), np.array([0.5]), np.array([1.0]), np.array([True]),
                      np.array([[0.1, 0.2]]))


def test_flat_fields_round_trip_in_the_agents_structure():
    trajectory, state = _trajectory(), LSTMState(h=np.array([7.0]), c=np.array([8.0]))
    flat = fields(trajectory, state)
    assert list(flat) == ["observation/frame", "observation/instruction", "action", "reward",
                          "discount", "episode_start", "behaviour_logits", "core_state/h",
                          "core_state/c"]
    template = LSTMState(h=np.zeros([1, 1]), c=np.zeros([1, 1]))
    back, restored = from_fields(flat, template)
    assert isinstance(restored, LSTMState)
    assert restored.h is flat["core_state/h"] and restored.c is flat["core_state/c"]
    assert list(back.observation) == ["frame", "instruction"]
    for name in Trajectory._fields[1:]:
        assert getattr(back, name) is getattr(trajectory, name), name
    assert back.observation["instruction"] is trajectory.observation["instruction"]
    # Without a template the core state is a dict by path; without a core state, empty.
    assert from_fields(flat)[1] == {"h": flat["core_state/h"], "c": flat["core_state/c"]}
    assert from_fields(fields(trajectory, ()), ())[1] == ()


def test_an_unroll_is_flat_only_when_asked():
    state = LSTMState(h=np.array([7.0]), c=np.array([8.0]))
    unroll = Unroll(_trajectory(), state, policy_version=5, actor_id=3)
    again = Unroll.from_flat(unroll.flat(), 5, 3, core_state_template=state)
    assert (again.policy_version, again.actor_id) == (5, 3)
    assert again.core_state == state and again.flat().keys() == unroll.flat().keys()
    partial = from_fields({k: v for k, v in unroll.flat().items() if k != "action"})[0]
    assert partial.action is None and "action" not in fields(partial, ())


def test_paths_follow_tf_nest_order_and_unflatten_back():
    structure = {"b": (1, 2), "a": {"z": 3}, "c": [LSTMState(h=4, c=5)]}
    paths = flatten_with_paths(structure)
    assert paths == [("a/z", 3), ("b/0", 1), ("b/1", 2), ("c/0/h", 4), ("c/0/c", 5)]
    doubled = unflatten_like(structure, {path: 2 * leaf for path, leaf in paths})
    assert doubled == {"b": (2, 4), "a": {"z": 6}, "c": [LSTMState(h=8, c=10)]}
    assert isinstance(doubled["c"][0], LSTMState)
