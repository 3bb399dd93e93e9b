"""UnrollValidator and its helpers, unit by unit: what an honest unroll yields (every field,
its actor and version), and each bound refusing with a message that names it; the episode
reports; the derived message limit against its arithmetic."""

import numpy as np
import pytest

from impala_tf.rpc import codec
from impala_tf.rpc.validation import (EPISODE_ENTRY_BYTES, HEADER_ALLOWANCE_BYTES,
                                      UnrollLimits, UnrollValidator, check_text, meta_int,
                                      parse_episodes)

T, A = 3, 4
SPEC = {"observation/frame": (np.uint8, (T + 1, 2, 2, 1)), "action": (np.int32, (T + 1,)),
        "reward": (np.float32, (T + 1,)), "discount": (np.float32, (T + 1,)),
        "episode_start": (np.bool_, (T + 1,)),
        "behaviour_logits": (np.float32, (T + 1, A)), "core_state/h": (np.float32, (5,))}


def _fields(**changes):
    rng = np.random.default_rng(1)
    fields = {"observation/frame": rng.integers(0, 256, (T + 1, 2, 2, 1), dtype=np.uint8),
              "action": np.array([0, 3, 1, 2], np.int32),
              "reward": np.array([0, 1, -2, 0.5], np.float32),
              "discount": np.array([1, 1, 0, 1], np.float32),
              "episode_start": np.array([True, False, False, True]),
              "behaviour_logits": rng.normal(size=(T + 1, A)).astype(np.float32),
              "core_state/h": rng.normal(size=5).astype(np.float32)}
    fields.update(changes)
    return fields


def _message(fields=None, **meta):
    meta = {"actor_id": 1, "policy_version": 9, "episodes": [], **meta}
    return codec.encode(codec.UNROLL_MAGIC, fields or _fields(), meta)


def _validator(**kwargs):
    return UnrollValidator(SPEC, A, None, num_actors=2, num_envs=2, **kwargs)


def test_an_honest_unroll_comes_back_whole_with_its_actor_version_and_episodes():
    fields = _fields()
    unroll, episodes = _validator()(_message(fields, episodes=[[1.5, 40, "pong"]]))
    assert (unroll.actor_id, unroll.policy_version) == (1, 9)
    assert list(unroll.flat()) == list(SPEC)
    for name, value in fields.items():
        np.testing.assert_array_equal(unroll.flat()[name], value, err_msg=name)
    assert [(e.episode_return, e.episode_frames, e.level) for e in episodes] == [
        (1.5, 40, "pong")]


@pytest.mark.parametrize("change, message", [
    (dict(action=np.array([0, 4, 1, 2], np.int32)), "action"),
    (dict(discount=np.array([1, 1.5, 0, 1], np.float32)), "discount"),
    (dict(reward=np.array([0, 2e6, 0, 0], np.float32)), "reward"),
    (dict(behaviour_logits=np.full((T + 1, A), 2e4, np.float32)), "behaviour_logits"),
    (dict(reward=np.array([0, np.nan, 0, 0], np.float32)), "reward"),
    (dict(**{"core_state/h": np.full(5, 1e7, np.float32)}), "core_state/h"),
])
def test_each_value_bound_refuses_and_names_its_field(change, message):
    with pytest.raises(codec.CodecError, match=message):
        _validator()(_message(_fields(**change)))


def test_a_field_of_the_wrong_shape_or_dtype_is_refused():
    with pytest.raises(codec.CodecError):
        _validator()(_message(_fields(action=np.zeros(T, np.int32))))
    with pytest.raises(codec.CodecError):
        _validator()(_message(_fields(action=np.zeros(T + 1, np.int64))))


def test_actor_ids_outside_the_run_and_refused_actors_are_rejected():
    validator = _validator()
    with pytest.raises(codec.CodecError, match="actor_id 2 is not one of this run's 2 actors"):
        validator(_message(actor_id=2))
    assert validator.refuse([1, 1]) == [1] and validator.refused == [1]
    with pytest.raises(codec.CodecError, match="actor 1 is refused"):
        validator(_message(actor_id=1))
    validator(_message(actor_id=0))  # the other actor still gets through


def test_episode_reports_are_bounded_by_what_the_steps_could_score():
    limits = UnrollLimits(max_abs_reward=10.0)
    assert parse_episodes([[100.0, 10, "a"]], limits, 6)[0].episode_return == 100.0
    with pytest.raises(codec.CodecError, match="beyond what its steps could score"):
        parse_episodes([[100.5, 10, "a"]], limits, 6)
    with pytest.raises(codec.CodecError, match="at most 6 entries"):
        parse_episodes([[0.0, 1, "a"]] * 7, limits, 6)
    with pytest.raises(codec.CodecError, match="malformed episode entry"):
        parse_episodes([[True, 1, "a"]], limits, 6)
    with pytest.raises(codec.CodecError, match="not printable"):
        parse_episodes([[0.0, 1, "a\u202eb"]], limits, 6)
    capped = UnrollLimits(max_abs_reward=10.0, max_abs_episode_return=50.0)
    with pytest.raises(codec.CodecError):
        parse_episodes([[60.0, 10, "a"]], capped, 6)


def test_meta_ints_and_texts():
    assert meta_int(5, "x", 0, 6) == 5
    for bad in (6, -1, True, 2.0, "5"):
        with pytest.raises(codec.CodecError, match="'x' must be an int"):
            meta_int(bad, "x", 0, 6)
    assert check_text("rooms_watermaze", "level") == "rooms_watermaze"
    assert check_text("x" * 200, "level") == "x" * 200  # the longest name allowed
    for bad in ("a\nb", "\ud800", "x" * 201, 3):
        with pytest.raises(codec.CodecError):
            check_text(bad, "level")


def test_the_derived_message_limit_is_a_whole_unroll_plus_its_episodes_header():
    validator = _validator()
    payload = sum(np.dtype(d).itemsize * int(np.prod(s)) for d, s in SPEC.values())
    assert validator.whole_unroll_bytes == payload
    assert validator.max_episodes_per_unroll == T * 2  # T steps x K=2 environments
    assert validator.max_message_bytes == (codec.PREFIX_BYTES + payload
                                           + HEADER_ALLOWANCE_BYTES + T * 2 * EPISODE_ENTRY_BYTES)
    honest = _message(episodes=[[1.0, 4, "l" * 200]] * (T * 2))
    assert len(honest) <= validator.max_message_bytes


def _above(value):
    """The next float32 past `value`, away from zero."""
    return np.nextafter(np.float32(value), np.float32(np.inf if value >= 0 else -np.inf))


def test_the_default_limits_hold_exactly_at_their_edges():
    """With `UnrollLimits()`'s defaults, each bounded value passes at its bound (either sign)
    and is refused, naming its field, one float32 past it: reward 1e6, logits 1e4, the core
    state 1e6, a float observation without spec bounds 1e6, action [0, A-1], discount [0, 1];
    an episode of 1e9 frames and a return of 1e6 per frame."""
    spec = {**SPEC, "observation/depth": (np.float32, (T + 1, 2))}
    validator = UnrollValidator(spec, A, None, num_actors=2, num_envs=2)
    base = _fields(**{"observation/depth": np.zeros((T + 1, 2), np.float32)})
    edges = {"reward": 1e6, "behaviour_logits": 1e4, "core_state/h": 1e6,
             "observation/depth": 1e6}
    for name, bound in edges.items():
        for sign in (1, -1):
            at = base[name].copy()
            at.flat[1] = sign * bound
            validator(codec.encode(codec.UNROLL_MAGIC, {**base, name: at},
                                   {"actor_id": 0, "policy_version": 0, "episodes": []}))
            at.flat[1] = _above(sign * bound)
            with pytest.raises(codec.CodecError, match=name):
                validator(codec.encode(codec.UNROLL_MAGIC, {**base, name: at},
                                       {"actor_id": 0, "policy_version": 0, "episodes": []}))
    for name, good, bad in [("action", [0, A - 1, 0, 0], [0, A, 0, 0]),
                            ("action", [0, A - 1, 0, 0], [0, -1, 0, 0]),
                            ("discount", [0, 1, 0, 1], [0, _above(1.0), 0, 1]),
                            ("discount", [0, 1, 0, 1], [0, -np.float32(1e-45), 0, 1])]:
        dtype = base[name].dtype
        validator(codec.encode(codec.UNROLL_MAGIC, {**base, name: np.array(good, dtype)},
                               {"actor_id": 0, "policy_version": 0, "episodes": []}))
        with pytest.raises(codec.CodecError, match=name):
            validator(codec.encode(codec.UNROLL_MAGIC, {**base, name: np.array(bad, dtype)},
                                   {"actor_id": 0, "policy_version": 0, "episodes": []}))
    defaults = UnrollLimits()
    assert parse_episodes([[3e6, 3, "a"], [-3e6, 3, "a"], [0.0, 10**9, "a"]],
                          defaults, 6)[2].episode_frames == 10**9
    for bad in ([3e6 + 1, 3, "a"], [-3e6 - 1, 3, "a"], [0.0, 10**9 + 1, "a"]):
        with pytest.raises(codec.CodecError):
            parse_episodes([bad], defaults, 6)


def test_episode_report_counts_and_the_validators_own_limits():
    """The count of reported episodes: exactly the most allowed passes (by default 1000 for
    library use; `max_episodes_per_unroll` when set); each refusal names what failed; the
    validator judges episodes by its own limits, not the defaults."""
    assert len(parse_episodes([[0.0, 1, "a"]] * 6, UnrollLimits(), 6)) == 6
    assert len(parse_episodes([[0.0, 1, "a"]] * 1000)) == 1000
    with pytest.raises(codec.CodecError, match="at most 1000 entries"):
        parse_episodes([[0.0, 1, "a"]] * 1001)
    capped = UnrollLimits(max_episodes_per_unroll=2)
    assert len(parse_episodes([[0.0, 1, "a"]] * 2, capped, 6)) == 2
    with pytest.raises(codec.CodecError, match="at most 2 entries"):
        parse_episodes([[0.0, 1, "a"]] * 3, capped, 6)
    with pytest.raises(codec.CodecError, match="'episode frames' must be an int"):
        parse_episodes([[0.0, -1, "a"]], UnrollLimits(), 6)
    with pytest.raises(codec.CodecError, match="an episode's level name must be a string"):
        parse_episodes([[0.0, 1, 7]], UnrollLimits(), 6)
    strict = _validator(limits=UnrollLimits(max_abs_episode_return=4.0))
    with pytest.raises(codec.CodecError, match="beyond what its steps could score"):
        strict(_message(episodes=[[5.0, 4, "a"]]))
    _validator()(_message(episodes=[[5.0, 4, "a"]]))  # within the default limits


def test_a_message_over_the_derived_limit_is_refused_before_it_is_read():
    validator = _validator()
    oversized = _message(episodes=[[0.0, 1, "a"]],
                         padding="x" * (validator.max_message_bytes + 1))
    with pytest.raises(codec.CodecError,
                       match=f"exceeds the limit of {validator.max_message_bytes}"):
        validator(oversized)


def test_the_core_state_comes_back_in_the_agents_structure():
    """With the agent's core-state template (a namedtuple, as the LSTM's), an unroll's core
    state is that structure, holding what was sent; without one, a dict by path."""
    from collections import namedtuple
    State = namedtuple("State", "h")
    fields = _fields()
    unroll, _ = _validator(core_state_template=State(h=np.zeros(5, np.float32)))(
        _message(fields))
    assert type(unroll.core_state) is State
    np.testing.assert_array_equal(unroll.core_state.h, fields["core_state/h"])
    plain, _ = _validator()(_message(fields))
    assert list(plain.core_state) == ["h"]


def test_an_unroll_of_one_step_may_report_one_episode_per_environment():
    spec = {name: (dtype, (2,) + shape[1:]) if shape[0] == T + 1 else (dtype, shape)
            for name, (dtype, shape) in SPEC.items()}
    validator = UnrollValidator(spec, A, None, num_actors=2, num_envs=3)
    assert validator.unroll_length == 1 and validator.max_episodes_per_unroll == 3


def test_episode_frames_without_a_limit_stop_at_the_meta_int_range():
    """max_episode_frames=None: any count below 2^62 passes (2^62 - 1 the largest)."""
    limits = UnrollLimits(max_episode_frames=None)
    assert limits.max_episode_frames == 2**62 - 1
    assert parse_episodes([[0.0, 2**62 - 1, "a"]], limits, 6)[0].episode_frames == 2**62 - 1
    with pytest.raises(codec.CodecError, match="'episode frames' must be an int"):
        parse_episodes([[0.0, 2**62, "a"]], limits, 6)


def test_integer_observations_without_spec_bounds_take_any_value_of_their_dtype():
    """Only float observations get `max_abs_observation` when the spec has no bounds: an
    int32 observation (a counter, token ids whose spec is unbounded) takes its dtype's
    extremes."""
    spec = {**SPEC, "observation/count": (np.int32, (T + 1,))}
    validator = UnrollValidator(spec, A, None, num_actors=2, num_envs=2)
    count = np.array([0, 2**31 - 1, -2**31, 7], np.int32)
    unroll, _ = validator(codec.encode(codec.UNROLL_MAGIC, _fields(**{"observation/count": count}),
                                       {"actor_id": 0, "policy_version": 0, "episodes": []}))
    np.testing.assert_array_equal(unroll.flat()["observation/count"], count)
