"""Multi-task Atari on real ROMs: every one of the 57 games created, reset and stepped with its
minimal and the full action set; several games in one actor equal each game stepped alone;
tasks, per-game episodes and the assignment of games to environments."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from impala_tf.envs.atari import AtariBatchedEnv
from impala_tf.envs.atari_multitask import (
    FULL_ACTION_NAMES, NUM_FULL_ACTIONS, AtariMultiTaskEnv, atari57_games, full_action_map,
    multitask_coverage, resolve_games)
from impala_tf.envs.base import FIRST, LAST, EpisodeStats
from impala_tf.specs import num_tasks

GAMES = atari57_games()


@pytest.mark.parametrize("half", [0, 1])
def test_every_game_steps_with_its_minimal_action_set(half):
    """Half the 57 games per test (the two run in parallel): each is created, reset and
    stepped with every action of its minimal set."""
    rng = np.random.default_rng(half)
    for game in GAMES[half::2]:
        env = AtariBatchedEnv(1, game=game, seed=0, num_threads=1)
        actions = env.action_spec().num_values
        assert 3 <= actions <= NUM_FULL_ACTIONS, game
        first = env.reset()
        assert first.observation["frame"].shape == (1, 84, 84, 4), game
        for action in rng.permutation(actions):
            timestep = env.step(np.array([action]))
        assert timestep.observation["frame"].any(), f"{game}: a black screen"
        env.close()


def test_all_57_games_step_together_with_the_full_action_set():
    """One environment per game in one multi-task environment: 57 tasks, 18 actions each,
    every action taken in every game."""
    env = AtariMultiTaskEnv(57, games=["atari57"], seed=0)
    assert env.games == GAMES and env.env_games == GAMES
    assert env.action_spec().num_values == NUM_FULL_ACTIONS == 18
    assert num_tasks(env.observation_spec()) == 57
    first = env.reset()
    np.testing.assert_array_equal(first.observation["task"], np.arange(57))
    assert (first.step_type == FIRST).all()
    for action in range(NUM_FULL_ACTIONS):
        timestep = env.step(np.full(57, action))
    assert timestep.observation["frame"].shape == (57, 84, 84, 4)
    lit = timestep.observation["frame"].reshape(57, -1).any(axis=1)
    assert lit.all(), [g for g, on in zip(GAMES, lit) if not on]
    env.close()


def test_actions_a_rom_ignores_play_as_their_nearest_legal_one():
    """ALE 0.12 gives Skiing 9 legal actions even with the full action space: FIRE moves
    play without FIRE, so all 18 of the agent's actions stay valid."""
    skiing = AtariBatchedEnv(1, game="skiing", full_action_space=True, num_threads=1)
    names = skiing.action_meanings
    assert len(names) == 9 and "FIRE" not in names
    mapped = full_action_map(names)
    assert [names[i] for i in mapped[[0, 1, 10, 17]]] == ["NOOP", "NOOP", "UP", "DOWNLEFT"]
    assert (full_action_map(FULL_ACTION_NAMES) == np.arange(18)).all()
    with pytest.raises(ValueError, match=r"\[0, 18\)"):
        AtariMultiTaskEnv(1, games=["pong"]).step(np.array([18]))


def test_several_games_in_one_actor_equal_each_game_alone():
    """Environments of the same game are stepped by one ALE interface and put back in their
    places: pixels, rewards and step types equal the games stepped separately."""
    games = ["pong", "breakout"]
    env = AtariMultiTaskEnv(5, games=games, seed=3,
                            env_games=["breakout", "pong", "breakout", "pong", "pong"])
    pong = AtariBatchedEnv(3, game="pong", seed=3 + 1, full_action_space=True, num_threads=1)
    breakout = AtariBatchedEnv(2, game="breakout", seed=3 + 0, full_action_space=True,
                               num_threads=1)
    pong_idx, breakout_idx = [1, 3, 4], [0, 2]
    rng = np.random.default_rng(0)
    got, alone_pong, alone_breakout = env.reset(), pong.reset(), breakout.reset()
    np.testing.assert_array_equal(got.observation["task"], [1, 0, 1, 0, 0])
    for t in range(60):
        for idx, alone in ((pong_idx, alone_pong), (breakout_idx, alone_breakout)):
            np.testing.assert_array_equal(got.observation["frame"][idx],
                                          alone.observation["frame"], err_msg=f"step {t}")
            np.testing.assert_array_equal(got.reward[idx], alone.reward)
            np.testing.assert_array_equal(got.step_type[idx], alone.step_type)
        actions = rng.integers(0, 18, 5)
        got = env.step(actions)
        alone_pong = pong.step(actions[pong_idx])
        alone_breakout = breakout.step(actions[breakout_idx])


def test_finished_games_are_reported_per_game_with_their_environment():
    with gin.unlock_config():
        gin.bind_parameter("AtariBatchedEnv.max_episode_frames", 120)
    try:
        env = AtariMultiTaskEnv(3, games=["boxing", "pong"], seed=0,
                                env_games=["pong", "boxing", "pong"])
        env.reset()
        finished, lasts = [], np.zeros(3, int)
        for _ in range(70):
            timestep = env.step(np.zeros(3, np.int64))
            lasts += timestep.step_type == LAST
            finished += env.pop_finished_episodes()
    finally:
        gin.clear_config()
    assert (lasts >= 1).all()
    assert sorted((e.level, e.env_index) for e in finished[:3]) == [
        ("boxing", 1), ("pong", 0), ("pong", 2)]
    assert all(e.episode_frames <= 120 + 30 + 4 for e in finished)  # cap, no-op start, repeat


def test_games_are_spread_over_environments_across_actors():
    games = ["pong", "breakout", "boxing", "krull", "atlantis"]
    seen = []
    for actor in range(2):
        env = AtariMultiTaskEnv(3, games=games, actor_index=actor)
        seen += env.levels
        env.close()
    assert seen == ["pong", "breakout", "boxing", "krull", "atlantis", "pong"]
    assert "cover 5 of the 5 games" in multitask_coverage(2, 3, 5)
    assert "(one environment more for 1 of the games)" in multitask_coverage(2, 3, 5)
    assert "raise Launcher.num_actors" in multitask_coverage(2, 8, 57)


@pytest.mark.parametrize("games, message", [
    (["pong", "Pong"], "more than once"),
    (["pong", "pongg"], "Did you mean 'pong'"),
    ([], "at least one game"),
])
def test_bad_game_lists_are_named(games, message):
    with pytest.raises(ValueError, match=message):
        resolve_games(games)


def test_evaluation_environments_of_a_multitask_run_play_each_game(tmp_path):
    """`evaluate` on a multi-task config: one maker per game, task ids those of training."""
    from impala_tf import config
    from impala_tf.evaluate import evaluation_environments
    config.parse_config(["atari/multitask_shallow_small.gin"])
    try:
        makers, kind, multitask = evaluation_environments(num_envs=2, seed=1)
        assert kind == "atari_multitask" and multitask and len(makers) == 6
        env = makers[2]()
    finally:
        gin.clear_config()
    assert env.levels == ["breakout", "breakout"]
    np.testing.assert_array_equal(env.reset().observation["task"], [2, 2])
    env.close()


def test_multitask_training_writes_per_game_returns(tmp_path):
    """The real command on the small multi-task config with short games: the learner accepts
    the actors' multi-task unrolls and metrics.jsonl has returns keyed by game."""
    bindings = ["AtariBatchedEnv.max_episode_frames = 400", "Actor.num_envs = 3",
                "AtariMultiTaskEnv.games = ['boxing', 'pong', 'breakout']",
                "TrainStep.popart = True"]
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.train", "--gin_file=atari/multitask_shallow_small.gin",
         f"--logdir={tmp_path}", "--max_frames=6000"]
        + [f"--gin_bindings={b}" for b in bindings],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "cover 3 of the 3 games" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    games = set()
    for record in records:
        games |= set(record.get("episode_return_per_level") or {})
        assert record["rejected_unrolls"] == 0
    assert games == {"boxing", "pong", "breakout"}
    assert "popart_sigma_mean" in records[-1]


def test_evaluate_prints_the_summary_beside_the_papers_for_the_same_games(tmp_path):
    """`python -m impala_tf.evaluate` on a tiny multi-task run (a saved untrained agent, three
    games cut to 400 frames): one row per game, and the summaries equal a hand computation
    from the rows and from the paper's per-game figures (Table C.1, deep multi-task)."""
    from impala_tf import config, gin_utils
    from impala_tf.networks import build_agent
    from impala_tf.learning import checkpoints
    from impala_tf.envs.factory import make_environment
    from impala_tf.specs import tensor_specs
    bindings = ["AtariMultiTaskEnv.games = ['boxing', 'pong', 'breakout']",
                "AtariBatchedEnv.max_episode_frames = 400"]
    config.parse_config(["atari/multitask_shallow_small.gin"], bindings)
    try:
        env = make_environment(1)  # as train does: the operative config records the kind
        agent = build_agent(tensor_specs(env.observation_spec()), 18,
                                     num_tasks(env.observation_spec()))
        env.close()
        saver = checkpoints.Checkpointer(str(tmp_path), agent)
        saver.save()
        gin_utils.write_operative_config(str(tmp_path))
    finally:
        gin.clear_config()
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.evaluate", f"--logdir={tmp_path}",
         "--num_episodes=2", "--num_envs=2"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "evaluation.json").read_text())
    means = {row["name"]: row["mean_return"] for row in report["rows"]}
    assert sorted(means) == ["boxing", "breakout", "pong"]
    assert all(row["episodes"] == 2 for row in report["rows"])
    # Human-normalised by hand: 100 (score - random) / (human - random), dqn_zoo's table.
    hns = [100 * (means["boxing"] - 0.1) / (12.1 - 0.1),
           100 * (means["pong"] + 20.7) / (14.6 + 20.7),
           100 * (means["breakout"] - 1.7) / (30.5 - 1.7)]
    assert report["summary"]["median"] == pytest.approx(np.median(hns))
    assert report["summary"]["mean"] == pytest.approx(np.mean(hns))
    # The paper's deep multi-task agent on the same three: 96.63, 8.58 and 35.67.
    paper = [100 * (96.63 - 0.1) / 12.0, 100 * (8.58 + 20.7) / 35.3, 100 * (35.67 - 1.7) / 28.8]
    assert report["paper"]["summary"]["median"] == pytest.approx(np.median(paper))  # 118.0
    assert report["paper"]["summary"]["mean"] == pytest.approx(np.mean(paper))  # 335.1
    assert "IMPALA deep multi-task" in report["paper"]["column"]
    assert f"(the paper's IMPALA deep multi-task (Table C.1) on these 3: " \
           f"{np.median(paper):.1f}%)" in result.stdout


def test_the_papers_summary_over_all_57_is_its_table_4_median():
    from impala_tf import scores
    rows = scores.score_rows(
        [EpisodeStats(0.0, 1, game) for game in GAMES], "atari",
        "impala_deep_multitask")
    assert scores.paper_summary(rows, "atari")["median"] == pytest.approx(59.7, abs=0.05)
    assert len(rows) == len(scores.paper_atari_scores()) == 57


@pytest.mark.parametrize("column, table_3", [("experts", 44.5), ("impala", 49.4)])
def test_the_papers_dmlab30_summary_over_its_30_levels_is_table_3(column, table_3):
    from impala_tf import scores
    from impala_tf.envs.dmlab import dmlab30_level_names
    rows = scores.score_rows([EpisodeStats(0.0, 1, level)
                                  for level in dmlab30_level_names("test")], "dmlab", column)
    assert scores.paper_summary(rows, "dmlab")["mean_capped"] == pytest.approx(
        table_3, abs=0.06)
