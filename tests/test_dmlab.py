"""The DMLab adapter against a faithful fake of the `deepmind_lab` API."""

import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

import fake_deepmind_lab
from impala_tf.envs import dmlab
from impala_tf.envs.base import FIRST, LAST, MID
from impala_tf.networks import Agent, AgentInput
from impala_tf.specs import tensor_specs


@pytest.fixture
def fake_lab(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepmind_lab", fake_deepmind_lab)
    fake_deepmind_lab.created.clear()
    return fake_deepmind_lab


def test_without_deepmind_lab_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepmind_lab", None)
    with pytest.raises(ImportError, match="not on PyPI.*build_pip_package"):
        dmlab.DmLabEnv("rooms_watermaze")


def test_level_config_and_observations(fake_lab):
    env = dmlab.DmLabEnv("rooms_watermaze", seed=3)
    lab = fake_lab.created[-1]
    assert lab.level == "contributed/dmlab30/rooms_watermaze"
    assert lab.config == {"width": "96", "height": "72", "logLevel": "WARN"}
    assert lab.requested == ["RGB_INTERLEAVED", "INSTR"]
    spec = env.observation_spec()
    assert spec["frame"].shape == (72, 96, 3) and spec["frame"].dtype == np.uint8
    assert spec["instruction"].shape == (16,) and spec["instruction"].dtype == np.int32
    assert env.action_spec().num_values == 9
    timestep = env.reset()
    assert timestep.first()
    assert timestep.observation["frame"].shape == (72, 96, 3)
    assert timestep.observation["frame"].dtype == np.uint8
    assert not timestep.observation["instruction"].any()  # not a language level


def test_actions_are_the_paper_set_repeated_four_times(fake_lab):
    env = dmlab.DmLabEnv("rooms_watermaze")
    lab = fake_lab.created[-1]
    env.reset()
    forward = 0  # row 0 of Table D.2: Forward
    timestep = env.step(forward)
    assert timestep.reward == 4.0  # one per frame moving forward, 4 frames
    np.testing.assert_array_equal(lab.actions[-1], [0, 0, 0, 1, 0, 0, 0])
    assert lab.num_steps() == 4
    assert dmlab.ACTION_SET.shape == (9, 7) and dmlab.ACTION_SET.dtype == np.intc
    for action in range(9):
        env.step(action)
        np.testing.assert_array_equal(lab.actions[-1], dmlab.ACTION_SET[action])
    env.reset()
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        env.step(9)


def test_episode_end_is_last_then_first(fake_lab):
    env = dmlab.DmLabEnv("rooms_watermaze", seed=1)
    env.reset()
    steps = fake_lab.EPISODE_FRAMES // 4
    kinds = [env.step(0).step_type for _ in range(steps)]
    assert kinds[:-1] == [MID] * (steps - 1) and kinds[-1] == LAST
    last = env.step(0)  # the step after LAST resets: FIRST, no action taken
    assert last.step_type == FIRST
    lab = fake_lab.created[-1]
    assert len(lab.seeds) == 2 and lab.seeds[0] != lab.seeds[1]


def test_last_step_has_discount_zero_and_an_observation(fake_lab):
    env = dmlab.DmLabEnv("rooms_watermaze")
    env.reset()
    timestep = None
    for _ in range(fake_lab.EPISODE_FRAMES // 4):
        timestep = env.step(0)
    assert timestep.last() and timestep.discount == 0.0
    assert timestep.observation["frame"].shape == (72, 96, 3)


def test_language_levels_give_instruction_tokens(fake_lab):
    env = dmlab.DmLabEnv("language_select_described_object", seed=0)
    tokens = env.reset().observation["instruction"]
    assert tokens.dtype == np.int32 and (tokens > 0).sum() == 4  # "Pick the red balloon"


def test_test_mode_uses_hold_out_levels_and_mixer_seed(fake_lab):
    names = dmlab.dmlab30_level_names("test")
    assert "rooms_collect_good_objects_test" in names
    assert "rooms_collect_good_objects_train" in dmlab.dmlab30_level_names("train")
    env = dmlab.make_dmlab(2, dmlab30=True, actor_index=0, mode="test")
    lab = fake_lab.created[0]
    assert lab.level == "contributed/dmlab30/rooms_collect_good_objects_test"
    assert lab.config["allowHoldOutLevels"] == "true"
    assert lab.config["mixerSeed"] == str(0x600D5EED)
    assert env.num_envs == 2 and env.frames_per_step == 4
    # Without test mode the hold-out level is refused, as real DMLab does.
    with pytest.raises(RuntimeError, match="hold-out"):
        dmlab.DmLabEnv("rooms_collect_good_objects_test", mode="train")


def test_multi_task_levels_are_round_robin_over_actors(fake_lab):
    names = dmlab.dmlab30_level_names("train")
    assert len(names) == 30 and len(set(names)) == 30
    assigned = [dmlab.levels_for_environments(i, 1, names)[0] for i in range(60)]
    assert assigned[:30] == names and assigned[30:] == names
    env = dmlab.make_dmlab(1, dmlab30=True, actor_index=31)
    assert env.levels == [names[1]]


def test_dmlab30_levels_spread_over_environments_so_any_actor_count_covers_them(fake_lab):
    """Environment j of actor i plays level (i * K + j) mod 30: 2 actors of 8 environments
    cover 16 levels (each actor's own 8), 4 cover all 30; before, 2 actors covered 2."""
    names = dmlab.dmlab30_level_names("train")
    played = [dmlab.make_dmlab(8, dmlab30=True, actor_index=i).levels for i in range(4)]
    assert played[0] == names[:8] and played[1] == names[8:16]
    assert len(set(played[0] + played[1])) == 16
    assert set(sum(played, [])) == set(names)
    assert [lab.level for lab in fake_lab.created[:8]] == [
        dmlab.level_path(n) for n in names[:8]]
    assert dmlab.dmlab30_coverage(2, 8).startswith(
        "DMLab-30: 2 actors x 8 environments = 16 environments cover 16 of the 30 levels; raise")
    assert "cover 30 of the 30 levels" in dmlab.dmlab30_coverage(4, 8)


def test_level_cache_is_reused(fake_lab, tmp_path):
    dmlab.DmLabEnv("rooms_watermaze", level_cache_dir=str(tmp_path))
    assert fake_lab.created[-1].cache_hit is False
    dmlab.DmLabEnv("rooms_watermaze", level_cache_dir=str(tmp_path))
    assert fake_lab.created[-1].cache_hit is True


def test_the_agent_reads_batched_dmlab_observations(fake_lab):
    env = dmlab.make_dmlab(3, level="language_select_located_object")
    agent = Agent(env.action_spec().num_values, tensor_specs(env.observation_spec()),
                  torso="shallow", lstm_size=16)
    assert agent.instruction_encoder is not None
    timestep = env.reset()
    inputs = AgentInput(
        prev_action=tf.zeros([3], tf.int32), reward=tf.constant(timestep.reward),
        episode_start=tf.constant(timestep.first()), observation=timestep.observation)
    out, _ = agent.step(inputs, agent.initial_state(3))
    assert out.policy_logits.shape == (3, 9)
    timestep = env.step(np.zeros(3, np.int64))
    assert (timestep.step_type == MID).all()


def test_dmlab30_evaluation_plays_the_30_distinct_test_levels(fake_lab):
    """With dmlab/dmlab30_deep.gin bound (make_dmlab.dmlab30 = True), every evaluation batch
    was replaced by actor 0's level: 30 rows of rooms_collect_good_objects_test."""
    from impala_tf import config
    from impala_tf.evaluate import evaluation_environments
    config.parse_config(["dmlab/dmlab30_deep.gin"])
    try:
        makers, kind, dmlab30 = evaluation_environments(num_envs=2, seed=1)
        envs = [make() for make in makers]
    finally:
        gin.clear_config()
    assert kind == "dmlab" and dmlab30
    assert [env.levels for env in envs] == [
        [name, name] for name in dmlab.dmlab30_level_names("test")]
    assert len({lab.level for lab in fake_lab.created}) == 30
    assert all(lab.config["allowHoldOutLevels"] == "true" for lab in fake_lab.created)
