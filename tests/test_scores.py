"""Human-normalised scores against a hand-computed case and against the paper."""

import numpy as np
import pytest

from impala_tf import scores
from impala_tf.envs.base import EpisodeStats


def test_hand_computed_case():
    ref = scores.Reference(random=10.0, human=110.0)
    assert scores.human_normalized(60.0, ref) == pytest.approx(50.0)
    summary = scores.atari_summary({"pong": 14.6 / 2 - 20.7 / 2, "breakout": 1.7})
    # pong: random -20.7, human 14.6 -> score -3.05 is 50%; breakout at random is 0%.
    assert summary["median"] == pytest.approx(25.0, abs=1e-6)
    assert summary["mean"] == pytest.approx(25.0, abs=1e-6)
    assert scores.dmlab30_mean_capped({"rooms_watermaze": 1e6, "rooms_keys_doors_puzzle": 4.1}) \
        == pytest.approx(50.0, abs=0.1)


def test_tables_are_complete():
    assert len(scores.atari_references()) == 57
    assert len(scores.paper_atari_scores()) == 57
    assert set(scores.paper_atari_scores()) == set(scores.atari_references())
    levels = scores.dmlab30_levels()
    assert len(levels) == 30
    assert sum(lvl.train_level != lvl.test_level for lvl in levels) == 2


def test_paper_atari_median_is_reproduced():
    paper = scores.paper_atari_scores()
    multitask = {game: row["impala_deep_multitask"] for game, row in paper.items()}
    assert round(scores.atari_summary(multitask)["median"], 1) == 59.7


def test_paper_dmlab30_mean_capped_is_reproduced():
    paper = scores.paper_dmlab30_scores()
    refs = scores.dmlab30_references()
    for column, want in (("experts", 44.45), ("impala", 49.36)):
        normalized = [
            min(100.0, scores.human_normalized(row[column], refs[row["reference_level"]]))
            for row in paper.values()
        ]
        assert np.mean(normalized) == pytest.approx(want, abs=0.01)


def test_unknown_names_are_reported():
    with pytest.raises(ValueError, match="pongg"):
        scores.atari_summary({"pongg": 1.0})
    with pytest.raises(ValueError, match="rooms_nowhere"):
        scores.dmlab30_mean_capped({"rooms_nowhere": 1.0})


def test_atari_rows_and_summary():
    episodes = [EpisodeStats(-3.05, 1000, "pong", 0), EpisodeStats(-3.05, 1200, "pong", 1),
                EpisodeStats(1.7, 500, "breakout", 0)]
    rows = scores.score_rows(episodes, "atari", "impala_shallow_experts")
    by_name = {r.name: r for r in rows}
    assert by_name["pong"].episodes == 2 and by_name["pong"].mean_frames == 1100
    assert by_name["pong"].human_normalized == pytest.approx(50.0)
    assert by_name["breakout"].human_normalized == pytest.approx(0.0)
    assert by_name["pong"].paper == pytest.approx(20.40)
    assert scores.summary(rows, "atari") == pytest.approx({"median": 25.0, "mean": 25.0})
    table = scores.format_table(rows, scores.summary(rows, "atari"))
    assert "pong" in table and "median: 25.0%" in table


def test_dmlab_summary_is_mean_capped():
    rows = scores.score_rows(
        [EpisodeStats(1e6, 10, "rooms_watermaze"), EpisodeStats(4.1, 10, "rooms_keys_doors_puzzle")],
        "dmlab", "experts")
    assert scores.summary(rows, "dmlab")["mean_capped"] == pytest.approx(50.0, abs=0.1)
