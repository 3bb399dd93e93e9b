"""metrics: the record a log line holds (means over the window's updates, lags counted once,
the feed's figures, levels), strict JSON whatever the numbers, and sinks that fail counted
and reported once per kind."""

import json
import logging
import math

import numpy as np

from impala_tf.envs.base import EpisodeStats
from impala_tf.learning.metrics import MetricsLog, MetricsWindow, SinkErrors, json_safe
from impala_tf.rpc.counters import EpisodeTally


def test_a_window_averages_its_updates_and_adds_the_feeds_figures():
    window = MetricsWindow(env_frames=1000)
    window.add({"total_loss": 2.0, "nonfinite_update": 0.0}, lags=np.array([1, 3]))
    window.add({"total_loss": 4.0, "nonfinite_update": 0.0}, lags=())
    window.skipped = 1
    episodes = EpisodeTally()
    for ret, level in ((1.0, "a"), (3.0, "a"), (-2.0, "b")):
        episodes.add(EpisodeStats(ret, 10, level))
    record = window.record(1600, 5, 2, {"queue_fill": 0.5, "refused_actors": [3]}, episodes)
    assert record["total_loss"] == 3.0 and "nonfinite_update" not in record
    assert record["policy_lag_mean"] == 2.0  # the lags of both batches' first updates
    assert record["policy_lag_max"] == 3.0
    assert record["queue_fill"] == 0.5 and record["refused_actors"] == [3]
    assert (record["env_frames"], record["learner_steps"]) == (1600, 5)
    assert record["fps"] > 0 and record["episodes"] == 3
    assert math.isclose(record["episode_return_mean"], 2.0 / 3)
    assert record["episode_return_per_level"] == {"a": 2.0, "b": -2.0}
    assert record["episodes_per_level"] == {"a": 2, "b": 1}
    assert (record["skipped_nonfinite_updates"], record["nonfinite_updates"]) == (1, 2)
    window.reset(1600)
    empty = window.record(1600, 5, 2, {}, EpisodeTally())
    assert empty["policy_lag_mean"] is None and empty["policy_lag_max"] is None
    assert "total_loss" not in empty
    assert "episode_return_per_level" not in empty


def test_metrics_lines_are_strict_json_and_reach_tensorboard(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.write({"env_frames": 7, "fps": float("nan"), "loss": 1.5,
               "by_level": {"x": float("inf"), "y": 2.0}, "names": ["a", float("-inf")]})
    line = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=None)
    assert line == {"env_frames": 7, "fps": None, "loss": 1.5, "by_level": {"x": None, "y": 2.0},
                    "names": ["a", None]}
    assert json_safe((1.0, float("nan"))) == [1.0, None]
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    assert log.summary_errors.count == 0


def test_a_failing_sink_is_counted_each_time_and_reported_once_per_kind(caplog):
    errors, other = SinkErrors(), SinkErrors()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            errors.add("progress", BrokenPipeError("gone"))
        errors.add("progress", ValueError("bad"))
        errors.add("metrics", BrokenPipeError("gone"))
    assert errors.count == 5
    assert len([r for r in caplog.records if "sink failed" in r.getMessage()]) == 3
    other.add("summaries", ValueError("x"))
    errors.absorb(other)
    assert (errors.count, other.count) == (6, 0)
