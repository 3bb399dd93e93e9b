"""The benchmark's end-to-end stage: `python -m impala_tf.train` with its actor processes,
measured over a window from outside (frames/s and policy lag from its metrics, CPU and
memory of each process from /proc)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional


def _proc_cpu_seconds(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _proc_rss_mb(pid: int) -> Optional[float]:
    """A process's resident memory in MB (/proc/PID/status), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def children(pid: int) -> List[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _records(logdir: str) -> List[Dict]:
    try:
        with open(os.path.join(logdir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def end_to_end(seconds: float, gin_files, gin_bindings, num_actors: Optional[int] = None,
               mirrored: bool = False, warmup_records: int = 2,
               inference: str = "actor", gpu: bool = False) -> Dict:
    """Trains with `python -m impala_tf.train` (`inference`: `Launcher.inference`; its
    learner sees the GPUs if `gpu`) and measures a window of `seconds` after the learner has
    logged `warmup_records` records with progress."""
    with tempfile.TemporaryDirectory() as logdir:
        command = [sys.executable, "-m", "impala_tf.train", f"--logdir={logdir}",
                   "--gin_bindings=Learner.log_every_seconds = 2",
                   "--gin_bindings=RunConfig.total_environment_frames = 1e12"]
        command += [f"--gin_file={f}" for f in gin_files]
        command += [f"--gin_bindings={b}" for b in gin_bindings]
        if num_actors is not None:
            command.append(f"--gin_bindings=Launcher.num_actors = {num_actors}")
        command.append(f"--gin_bindings=Launcher.inference = '{inference}'")
        if mirrored:
            command += ["--gin_bindings=make_strategy.kind = 'mirrored'",
                        "--gin_bindings=make_strategy.num_cpu_devices = 2"]
        # train hides GPUs from its actors itself; its learner sees them with --gpu
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env=child_environ(gpu))
        try:
            deadline = time.time() + 600
            while time.time() < deadline and process.poll() is None:
                if sum(r["env_frames"] > 0 for r in _records(logdir)) >= warmup_records:
                    break
                time.sleep(0.5)
            if process.poll() is not None:
                raise RuntimeError("training exited: " + process.stderr.read().decode()[-2000:])
            pids = [process.pid] + children(process.pid)
            cpu0 = {p: _proc_cpu_seconds(p) for p in pids}
            rss = {p: _proc_rss_mb(p) for p in pids[1:]}
            first = _records(logdir)[-1]
            t0 = time.time()
            time.sleep(seconds)
            # A window as long as the log interval can end just before the learner's next
            # line: wait for it (the learner logs every 2 s), so the window holds one.
            late = time.time() + 10
            while (time.time() < late and process.poll() is None
                   and not any(r["time"] > first["time"] for r in _records(logdir))):
                time.sleep(0.1)
            cpu1 = {p: _proc_cpu_seconds(p) for p in pids}
            wall = time.time() - t0
            window = [r for r in _records(logdir) if r["time"] > first["time"]]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if not window:
        raise RuntimeError("no metrics were logged during the measured window")
    last = window[-1]
    lags = [r["policy_lag_mean"] for r in window if r.get("policy_lag_mean") is not None]
    used = {p: (cpu1[p] - cpu0[p]) / wall for p in pids
            if cpu0.get(p) is not None and cpu1.get(p) is not None}
    return {
        "num_actors": len(pids) - 1, "learner_devices": 2 if mirrored else 1,
        "inference": inference,
        "frames_per_s": (last["env_frames"] - first["env_frames"]) / (last["time"] - first["time"]),
        "policy_lag_mean": sum(lags) / len(lags) if lags else None,
        "queue_fill_mean": sum(r["queue_fill"] for r in window) / len(window),
        "learner_cores_used": used.get(pids[0]),
        "actor_cores_used": [used.get(p) for p in pids[1:]],
        "actor_rss_mb": [rss.get(p) for p in pids[1:]],
        "total_cores_used": sum(used.values()),
        "observation_bytes_per_frame": last.get("observation_bytes_per_frame"),
    }


def child_environ(gpu: bool) -> Dict[str, str]:
    """A child process's environment: quiet TensorFlow, and no GPU unless `gpu`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env
