"""Soak run: trains for a set time and prints the resident memory of the learner and its
actors over time, to show that memory stays flat (a benchmark, not a test).

    python experiments/soak.py --minutes 60 [--gin_file catch.gin] [--every 30]
        [--logdir /tmp/soak] [--gin_bindings ...]

Starts `python -m impala_tf.train` (learner plus local actor processes), samples VmRSS from
/proc every `--every` seconds, and prints one line per sample: elapsed time, frames, learner
RSS, the actors' summed RSS. At the end it prints the learner's growth from the first sample
after the warm-up (a quarter of the run, at most 10 minutes) to the last, and the trend fitted
over those samples in MB/hour; exits non-zero if the trend exceeds `--max_growth_mb_per_hour`
(default 50).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from impala_tf.tools.end_to_end import children  # noqa: E402


def rss_mb(pid: int) -> Optional[float]:
    """Resident set size of `pid` in MB (from /proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def last_frames(logdir: str) -> int:
    try:
        with open(os.path.join(logdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
        return int(json.loads(lines[-1])["env_frames"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--gin_file", default="catch.gin")
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--logdir", default="/tmp/impala_tf_soak")
    parser.add_argument("--max_growth_mb_per_hour", type=float, default=50.0)
    args = parser.parse_args()

    command = [sys.executable, "-m", "impala_tf.train", f"--gin_file={args.gin_file}",
               f"--logdir={args.logdir}", "--gin_bindings=RunConfig.total_environment_frames=1e12",
               f"--max_minutes={args.minutes}"]
    command += [f"--gin_bindings={b}" for b in args.gin_bindings]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    learner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    start = time.time()
    warmup = min(0.25 * args.minutes * 60, 600.0)
    samples = []
    # SIGINT or SIGTERM end the run early (with the summary). Installed explicitly: a shell
    # that starts this in the background has SIGINT ignored, so no KeyboardInterrupt.
    stopping = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stopping.set())
    print(f"{'minutes':>8} {'frames':>12} {'learner MB':>11} {'actors MB':>10}", flush=True)
    while learner.poll() is None and not stopping.wait(args.every):
        learner_rss = rss_mb(learner.pid)
        if learner_rss is None:
            break
        actors = [rss_mb(p) for p in children(learner.pid)]
        elapsed = time.time() - start
        samples.append((elapsed, learner_rss))
        print(f"{elapsed / 60:8.1f} {last_frames(args.logdir):12,d} {learner_rss:11.1f} "
              f"{sum(a for a in actors if a):10.1f}", flush=True)
    if learner.poll() is None:
        learner.send_signal(signal.SIGTERM)  # a checkpoint, then its actors stop
    learner.wait()
    steady = [s for s in samples if s[0] >= warmup]
    if len(steady) < 2:
        print("too few samples after the warm-up to measure growth")
        return 0
    (t0, m0), (t1, m1) = steady[0], steady[-1]
    # Least-squares slope over the steady samples: less noisy than the two end points.
    mean_t = sum(t for t, _ in steady) / len(steady)
    mean_m = sum(m for _, m in steady) / len(steady)
    sxx = max(sum((t - mean_t) ** 2 for t, _ in steady), 1e-9)
    slope = sum((t - mean_t) * (m - mean_m) for t, m in steady) / sxx
    per_hour = slope * 3600
    residuals = [m - (mean_m + slope * (t - mean_t)) for t, m in steady]
    se_per_hour = (3600 * (sum(r * r for r in residuals) / max(len(steady) - 2, 1) / sxx) ** 0.5
                   if len(steady) > 2 else float("nan"))
    print(f"learner RSS from {t0 / 60:.1f} to {t1 / 60:.1f} min: {m0:.1f} -> {m1:.1f} MB "
          f"({m1 - m0:+.1f} MB); fitted trend {per_hour:+.1f} +- {2 * se_per_hour:.1f} MB/hour "
          f"(2 standard errors); range {min(m for _, m in steady):.1f}-"
          f"{max(m for _, m in steady):.1f} MB")
    return 0 if per_hour <= args.max_growth_mb_per_hour else 1


if __name__ == "__main__":
    sys.exit(main())
