"""The population's figure: every member's return over its frames, a mark where it copied
another, and each evolved hyperparameter over its frames.

    python -m impala_tf.pbt.plot LOGDIR [--baseline RUN_LOGDIR] [--out FILE]

LOGDIR is `python -m impala_tf.pbt`'s; `--baseline` adds a run without PBT (a
`python -m impala_tf.train` logdir) as a dashed line. Writes LOGDIR/population.png.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List


def members(logdir: Path) -> Dict[str, Dict]:
    """Member name -> its metrics records and start events."""
    found = {}
    for run in sorted(Path(logdir).glob("population/*/run")):
        events = [json.loads(line) for line in (run / "pbt.jsonl").read_text().splitlines()]
        metrics_file = run / "metrics.jsonl"
        records = ([json.loads(line) for line in metrics_file.read_text().splitlines()]
                   if metrics_file.exists() else [])
        found[events[0]["trial_id"]] = {"records": records, "events": events}
    return found


def _returns(records: List[Dict]):
    points = [(r["env_frames"], r["episode_return_mean"]) for r in records
              if r.get("episode_return_mean") is not None]
    return [f for f, _ in points], [v for _, v in points]


def plot(logdir: Path, out: Path, baseline: Path = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    population = members(logdir)
    names = sorted({name for m in population.values()
                    for name in m["events"][0]["hyperparameters"]})
    figure, axes = plt.subplots(1 + len(names), 1, figsize=(8, 3 + 2.2 * len(names)),
                                sharex=True, squeeze=False)
    axes = axes[:, 0]
    for member, data in population.items():
        frames, returns = _returns(data["records"])
        line, = axes[0].plot(frames, returns, label=member, linewidth=1)
        for event in data["events"][1:]:
            step = event["last_step"]
            if step and step.get("donor"):
                axes[0].axvline(step["at_frames"], color=line.get_color(), alpha=0.3,
                                linestyle=":")
        for axis, name in zip(axes[1:], names):
            xs, ys = [], []
            for event in data["events"]:
                step = event.get("last_step") or {}
                xs.append(step.get("at_frames", 0))
                ys.append(event["hyperparameters"][name])
            xs.append(frames[-1] if frames else xs[-1])
            ys.append(ys[-1])
            axis.step(xs, ys, where="post", color=line.get_color(), linewidth=1)
            axis.set_yscale("log")
            axis.set_ylabel(name.split(".")[-1])
    if baseline is not None:
        records = [json.loads(line) for line in
                   (Path(baseline) / "metrics.jsonl").read_text().splitlines()]
        frames, returns = _returns(records)
        axes[0].plot(frames, returns, "k--", label="without PBT", linewidth=1)
    axes[0].set_ylabel("episode return")
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("environment frames (each member's own)")
    figure.suptitle(f"{len(population)} members; dotted: a copy of another member")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = plot(args.logdir, args.out or args.logdir / "population.png", args.baseline)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
