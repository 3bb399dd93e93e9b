"""Learning curves from runs' metrics.jsonl: episode return against frames and wall time.

    python -m impala_tf.plot LOGDIR [LOGDIR ...] --out curves.png [--labels a,b] [--title T]

Each run is a thin line of its log windows' mean returns and a thick line smoothed over the
last `--smooth_episodes` episodes (each window weighted by its episode count). Multi-task runs
(records with `episode_return_per_level`) get one extra panel per level. The command also
prints each run's summary (frames, wall time, mean return over its last 100 episodes).
"""

import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
from absl import app, flags

from impala_tf import command_line, quiet


class Run(NamedTuple):
    """One run's log windows, `[N]` float64 arrays except `levels`.

    Attributes:
      label: the name shown in the legend.
      seconds: wall time since the first record, pauses left out (`running_seconds`).
      frames: environment frames at the end of each window.
      episodes: episodes finished in each window.
      returns: mean episode return of each window (NaN where no episode finished).
      levels: level name -> (`[N]` frames, `[N]` episodes, `[N]` mean return) for multi-task runs.
    """

    label: str
    seconds: np.ndarray
    frames: np.ndarray
    episodes: np.ndarray
    returns: np.ndarray
    levels: Dict[str, tuple]


def running_seconds(times: Sequence[float]) -> np.ndarray:
    """Wall time since the first record, `[N]` float64, with the pauses of a stopped and
    resumed run left out: a gap between records longer than 60 s and than 10x the median
    gap counts as one median gap (records come every `Learner.log_every_seconds`)."""
    times = np.asarray(times, np.float64)
    gaps = np.diff(times)
    if gaps.size:
        typical = float(np.median(gaps))
        gaps = np.where(gaps > max(60.0, 10.0 * typical), typical, gaps)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def load_run(logdir: str, label: Optional[str] = None) -> Run:
    """Reads LOGDIR/metrics.jsonl (one JSON object per line; a torn last line is skipped)."""
    path = os.path.join(logdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {logdir!r} a training run's logdir?")
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not records:
        raise ValueError(f"{path} holds no records yet.")
    seconds = running_seconds([r["time"] for r in records])
    frames = np.array([r["env_frames"] for r in records], np.float64)
    episodes = np.array([r.get("episodes", 0) for r in records], np.float64)
    returns = np.array([np.nan if r.get("episode_return_mean") is None
                        else r["episode_return_mean"] for r in records], np.float64)
    levels: Dict[str, list] = {}
    for i, record in enumerate(records):
        per_level = record.get("episode_return_per_level") or {}
        counts = record.get("episodes_per_level") or {}
        for level, value in per_level.items():
            levels.setdefault(level, []).append((frames[i], counts.get(level, 1), value))
    levels_arrays = {level: tuple(np.array(column, np.float64) for column in zip(*rows))
                     for level, rows in levels.items()}
    return Run(label or os.path.basename(os.path.normpath(logdir)), seconds, frames, episodes,
               returns, levels_arrays)


def _trailing_mean(episodes: np.ndarray, returns: np.ndarray, end: int,
                   window_episodes: int) -> tuple:
    """(episode-weighted mean return, episodes) of the windows ending at index `end`, going
    back until they hold at least `window_episodes` episodes; windows without one count 0."""
    total, weighted = 0.0, 0.0
    for j in range(end, -1, -1):
        if total >= window_episodes:
            break
        if not np.isnan(returns[j]):
            total += episodes[j]
            weighted += episodes[j] * returns[j]
    return (weighted / total if total else float("nan")), int(total)


def smoothed(episodes: np.ndarray, returns: np.ndarray, window_episodes: int) -> np.ndarray:
    """`[N]` episode-weighted mean return over the trailing windows that hold at least
    `window_episodes` episodes (fewer at the start); NaN until the first episode."""
    return np.array([_trailing_mean(episodes, returns, i, window_episodes)[0]
                     for i in range(len(returns))], np.float64)


def final_return(run: Run, num_episodes: int = 100) -> tuple:
    """(mean return, episodes it covers) over the last windows holding >= `num_episodes`
    episodes (whole windows, so slightly more than `num_episodes` where they do not align)."""
    return _trailing_mean(run.episodes, run.returns, len(run.returns) - 1, num_episodes)


def frames_to_reach(run: Run, threshold: float, window_episodes: int = 100) -> Optional[int]:
    """Frames at the first log window where the smoothed return reached `threshold`."""
    smooth = smoothed(run.episodes, run.returns, window_episodes)
    reached = np.flatnonzero(np.nan_to_num(smooth, nan=-np.inf) >= threshold)
    return int(run.frames[reached[0]]) if len(reached) else None


def summary(run: Run) -> dict:
    """Frames, wall time, mean return over the last 100 episodes, frames per second."""
    mean, count = final_return(run)
    seconds = float(run.seconds[-1]) if len(run.seconds) else 0.0
    return {
        "run": run.label,
        "frames": int(run.frames[-1]),
        "wall_hours": seconds / 3600.0,
        "final_return": mean,
        "final_episodes": count,
        "frames_per_second": float(run.frames[-1] - run.frames[0]) / max(seconds, 1e-9),
        "best_smoothed_return": float(np.nanmax(smoothed(run.episodes, run.returns, 100)))
        if np.any(run.episodes) else float("nan"),
    }


def plot_runs(runs: Sequence[Run], out: str, smooth_episodes: int = 100,
              title: Optional[str] = None) -> None:
    """Writes the figure: return vs frames and vs wall time, then one panel per level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level_names = sorted({level for run in runs for level in run.levels})
    level_rows = int(np.ceil(len(level_names) / 3))
    fig = plt.figure(figsize=(12, 4.2 + 3.0 * level_rows))
    grid = fig.add_gridspec(1 + level_rows, 6, height_ratios=[1.4] + [1.0] * level_rows)
    ax_frames = fig.add_subplot(grid[0, :3])
    ax_time = fig.add_subplot(grid[0, 3:], sharey=ax_frames)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        smooth = smoothed(run.episodes, run.returns, smooth_episodes)
        have = ~np.isnan(run.returns)
        for ax, x in ((ax_frames, run.frames / 1e6), (ax_time, run.seconds / 3600.0)):
            ax.plot(x[have], run.returns[have], color=color, alpha=0.25, linewidth=0.8)
            ax.plot(x, smooth, color=color, linewidth=2.0, label=run.label)
    ax_frames.set_xlabel("environment frames (millions)")
    ax_time.set_xlabel("wall time (hours)")
    ax_frames.set_ylabel(f"episode return (smoothed over {smooth_episodes} episodes)")
    ax_frames.legend(loc="best", fontsize=8)
    for ax in (ax_frames, ax_time):
        ax.grid(alpha=0.3)
    for k, level in enumerate(level_names):
        ax = fig.add_subplot(grid[1 + k // 3, 2 * (k % 3):2 * (k % 3) + 2])
        for i, run in enumerate(runs):
            if level not in run.levels:
                continue
            frames, counts, values = run.levels[level]
            ax.plot(frames / 1e6, values, color=colors[i % len(colors)], alpha=0.25, linewidth=0.8)
            ax.plot(frames / 1e6, smoothed(counts, values, max(1, smooth_episodes // 10)),
                    color=colors[i % len(colors)], linewidth=1.5)
        ax.set_title(level, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_string("out", None, "PNG file to write (default: FIRST_LOGDIR/curves.png).")
    flags.DEFINE_list("labels", [], "Legend labels, one per LOGDIR (default: the dir names).")
    flags.DEFINE_integer("smooth_episodes", 100, "Episodes in the smoothing window.")
    flags.DEFINE_string("title", None, "Figure title.")


def main(argv: List[str]) -> None:
    logdirs = argv[1:]
    if not logdirs:
        raise app.UsageError("Give at least one LOGDIR.")
    if FLAGS.labels and len(FLAGS.labels) != len(logdirs):
        raise app.UsageError(f"--labels has {len(FLAGS.labels)} names for {len(logdirs)} runs.")
    labels = FLAGS.labels or [None] * len(logdirs)
    runs = [load_run(logdir, label) for logdir, label in zip(logdirs, labels)]
    for run in runs:
        s = summary(run)
        print(f"{s['run']}: {s['frames']:,} frames in {s['wall_hours']:.2f} h "
              f"({s['frames_per_second']:,.0f} frames/s); mean return over the last "
              f"{s['final_episodes']} episodes {s['final_return']:+.2f}; best smoothed "
              f"{s['best_smoothed_return']:+.2f}")
    out = FLAGS.out or os.path.join(logdirs[0], "curves.png")
    plot_runs(runs, out, FLAGS.smooth_episodes, FLAGS.title)
    print(f"wrote {out}")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.plot")


if __name__ == "__main__":
    cli()
