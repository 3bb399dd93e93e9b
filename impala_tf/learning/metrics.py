"""What the learner reports: one record per log interval to LOGDIR/metrics.jsonl and
TensorBoard (`MetricsLog`), the window of update stats it sums (`MetricsWindow`), and the
logging sinks' contained failures (`SinkErrors`)."""

import json
import logging
import math
import os
import time
from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf

from impala_tf.learning.faults import is_disk_full
from impala_tf.rpc.counters import EpisodeTally, printable


def json_safe(value):
    """`value` with every non-finite float replaced by None (null), so that metrics.jsonl
    stays strict JSON whatever the numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class SinkErrors:
    """Failures of the learner's logging sinks (metrics, summaries, progress): counted, and
    logged once per (sink, exception type), so a bad value or a broken terminal is seen
    without ending the run or flooding the log."""

    def __init__(self):
        self.count = 0
        self._seen = set()

    def add(self, sink: str, error: BaseException) -> None:
        self.count += 1
        kind = (sink, type(error).__name__)
        if kind not in self._seen:
            self._seen.add(kind)
            logging.warning("The learner's %s sink failed (%s: %s); contained and counted in "
                            "logging_errors, reported once.", sink, type(error).__name__,
                            printable(str(error))[:200])

    def absorb(self, other: "SinkErrors") -> None:
        """Adds the failures `other` collected since the last call."""
        self.count += other.count
        other.count = 0


class MetricsLog:
    """Appends one JSON object per log interval to LOGDIR/metrics.jsonl and mirrors the
    numbers to TensorBoard. A summary that TensorBoard refuses is skipped and counted in
    `summary_errors`; the others are written."""

    def __init__(self, logdir: str, write_summaries: bool = True):
        self.path = os.path.join(logdir, "metrics.jsonl")
        self._writer = tf.summary.create_file_writer(logdir) if write_summaries else None
        self.summary_errors = SinkErrors()

    def write(self, record: Mapping) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        if self._writer is None:
            return
        scalars = []
        for key, value in record.items():
            if (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):
                scalars.append((key, value))
            elif isinstance(value, dict):
                scalars.extend((f"{key}/{sub}", sub_value) for sub, sub_value in value.items()
                               if isinstance(sub_value, (int, float))
                               and math.isfinite(sub_value))
        with self._writer.as_default(step=int(record["env_frames"])):
            for name, value in scalars:
                try:
                    tf.summary.scalar(name, value)
                except Exception as error:  # noqa: BLE001 (one bad name loses one scalar)
                    if is_disk_full(error):
                        raise
                    self.summary_errors.add("summaries", error)
        self._writer.flush()


class MetricsWindow:
    """Accumulates the update stats between two log lines, and makes the line's record."""

    def __init__(self, env_frames: int):
        self.reset(env_frames)

    def reset(self, env_frames: int) -> None:
        self.start_time = time.time()
        self.start_frames = env_frames
        self.steps = 0
        self.skipped = 0
        self.sums: Dict[str, float] = {}
        self.lags: List[float] = []

    def add(self, stats: Mapping[str, tf.Tensor], lags: np.ndarray) -> None:
        self.steps += 1
        for name, value in stats.items():
            if name != "nonfinite_update":  # counted as `skipped` instead
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.lags.extend(np.asarray(lags, np.float64).tolist())

    def record(self, env_frames: int, learner_step: int, nonfinite_updates: int,
               ingest: Mapping[str, object], episodes: EpisodeTally) -> dict:
        """The log line: progress, the window's episodes and mean stats, and `ingest` (what
        the feed reports: queue fill, accepted and rejected unrolls, refused actors...)."""
        elapsed = max(time.time() - self.start_time, 1e-9)
        record = {
            "time": time.time(),
            "env_frames": env_frames,
            "learner_steps": learner_step,
            "fps": (env_frames - self.start_frames) / elapsed,
            "episodes": episodes.count,
            "episode_return_mean": episodes.return_mean,
            "episode_length_mean": episodes.length_mean,
            "policy_lag_mean": float(np.mean(self.lags)) if self.lags else None,
            # The tail: after a stall, what sat in the queues is this many updates old (no
            # bound is enforced; back-pressure bounds it, see docs/testing.md).
            "policy_lag_max": float(np.max(self.lags)) if self.lags else None,
            **ingest,
            "skipped_nonfinite_updates": self.skipped,
            "nonfinite_updates": nonfinite_updates,
        }
        record.update({k: v / self.steps for k, v in self.sums.items()} if self.steps else {})
        if len(episodes.level_counts) > 1:
            record["episode_return_per_level"] = episodes.level_return_means()
            record["episodes_per_level"] = dict(sorted(episodes.level_counts.items()))
        return record
