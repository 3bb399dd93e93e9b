"""Learning-curve plots and run summaries from metrics.jsonl."""

import json
import os

import numpy as np
import pytest

from impala_tf import plot


def _write_run(logdir, windows, per_level=None, torn_tail=False):
    """windows: [(seconds, frames, episodes, mean return or None)]."""
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "metrics.jsonl"), "w") as f:
        for i, (seconds, frames, episodes, mean) in enumerate(windows):
            record = {"time": 1000.0 + seconds, "env_frames": frames, "episodes": episodes,
                      "episode_return_mean": mean}
            if per_level is not None:
                record["episode_return_per_level"] = per_level[i][0]
                record["episodes_per_level"] = per_level[i][1]
            f.write(json.dumps(record) + "\n")
        if torn_tail:
            f.write('{"time": 99')  # a record cut off by a kill mid-write


def test_load_run_reads_windows_and_skips_a_torn_line(tmp_path):
    _write_run(tmp_path / "a", [(0, 100, 0, None), (10, 200, 2, -1.0), (20, 300, 1, 0.5)],
               torn_tail=True)
    run = plot.load_run(str(tmp_path / "a"))
    assert run.label == "a"
    np.testing.assert_array_equal(run.seconds, [0, 10, 20])
    np.testing.assert_array_equal(run.frames, [100, 200, 300])
    np.testing.assert_array_equal(run.episodes, [0, 2, 1])
    assert np.isnan(run.returns[0]) and run.returns[2] == 0.5


def test_wall_time_leaves_out_the_pause_of_a_resumed_run(tmp_path):
    """Records every 10 s; the run stopped after 30 s and resumed 4 hours later."""
    times = [0, 10, 20, 30] + [30 + 4 * 3600 + t for t in (0, 10, 20)]
    _write_run(tmp_path / "a", [(t, 100 * i, 0, None) for i, t in enumerate(times)])
    np.testing.assert_array_equal(plot.load_run(str(tmp_path / "a")).seconds,
                                  [0, 10, 20, 30, 40, 50, 60])
    # Slow but steady logging is not a pause.
    np.testing.assert_array_equal(plot.running_seconds([0, 100, 250, 400]), [0, 100, 250, 400])


def test_load_run_names_a_dir_without_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="training run"):
        plot.load_run(str(tmp_path))


def test_smoothing_weights_windows_by_their_episodes():
    episodes = np.array([0, 2, 1, 3, 10])
    returns = np.array([np.nan, -1.0, 2.0, 0.0, 1.0])
    out = plot.smoothed(episodes, returns, window_episodes=4)
    assert np.isnan(out[0])
    assert out[1] == pytest.approx(-1.0)
    assert out[2] == pytest.approx((2 * -1.0 + 1 * 2.0) / 3)          # only 3 episodes so far
    assert out[3] == pytest.approx((3 * 0.0 + 1 * 2.0) / 4)           # windows 3 and 2 hold 4
    assert out[4] == pytest.approx(1.0)                               # window 4 alone holds 10


def test_final_return_covers_at_least_the_last_100_episodes():
    run = plot.Run("r", np.arange(4.0), np.arange(4.0), np.array([80, 60, 50, 70.0]),
                   np.array([-5.0, 1.0, 2.0, 3.0]), {})
    mean, count = plot.final_return(run, 100)
    assert count == 120
    assert mean == pytest.approx((70 * 3.0 + 50 * 2.0) / 120)


def test_frames_to_reach_a_smoothed_return():
    run = plot.Run("r", np.arange(4.0), np.array([10.0, 20, 30, 40]), np.array([100.0] * 4),
                   np.array([0.0, 0.5, 0.95, 0.7]), {})
    assert plot.frames_to_reach(run, 0.9) == 30
    assert plot.frames_to_reach(run, 0.99) is None
    # Smoothed over 200 episodes, window 3 averages to 0.725: 0.9 is never reached.
    assert plot.frames_to_reach(run, 0.9, window_episodes=200) is None


def test_summary_of_a_run(tmp_path):
    _write_run(tmp_path / "r", [(0, 0, 0, None), (1800, 1_000_000, 60, -20.0),
                                (3600, 2_000_000, 60, -10.0)])
    s = plot.summary(plot.load_run(str(tmp_path / "r")))
    assert s["frames"] == 2_000_000 and s["wall_hours"] == pytest.approx(1.0)
    assert s["final_return"] == pytest.approx(-15.0) and s["final_episodes"] == 120
    assert s["frames_per_second"] == pytest.approx(2_000_000 / 3600)


def test_plot_writes_a_figure_with_level_panels(tmp_path):
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "single", [(i * 10, i * 1000, 3, -21.0 + i) for i in range(20)])
    levels = [({"lvl_a": float(i), "lvl_b": -float(i)}, {"lvl_a": 2, "lvl_b": 1})
              for i in range(20)]
    _write_run(tmp_path / "multi", [(i * 10, i * 1000, 3, 0.0) for i in range(20)],
               per_level=levels)
    multi = plot.load_run(str(tmp_path / "multi"))
    assert set(multi.levels) == {"lvl_a", "lvl_b"}
    np.testing.assert_array_equal(multi.levels["lvl_a"][1], np.full(20, 2.0))
    out_single = tmp_path / "single.png"
    out_both = tmp_path / "both.png"
    plot.plot_runs([plot.load_run(str(tmp_path / "single"))], str(out_single))
    plot.plot_runs([plot.load_run(str(tmp_path / "single")), multi], str(out_both), title="t")
    import matplotlib.image
    single = matplotlib.image.imread(str(out_single))
    both = matplotlib.image.imread(str(out_both))
    assert single.shape[1] == both.shape[1]
    assert both.shape[0] > single.shape[0]  # a row of per-level panels below the curves
    assert single.std() > 0.01  # not a blank image
