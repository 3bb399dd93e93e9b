"""The wiring of a run: the learner built from the parsed gin config, the local actor
processes spawned and restarted (`Launcher`), progress lines printed, and the run stopped.

`impala_tf.train` is the command line over it; `run_learner` is what `--role=all` and
`--role=learner` run (`--role=actor` runs `acting.process.run_actor_process`).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

import gin

import impala_tf  # noqa: F401  (sets the Keras backend)
from impala_tf import gin_utils
from impala_tf.distribute import make_strategy, num_workers
from impala_tf.acting.actor import configured_actor_seed, configured_num_envs
from impala_tf.acting import INFERENCE_MODES
from impala_tf.envs.atari import ACTORS_ON_HOST_VARIABLE
from impala_tf.envs.atari_multitask import multitask_coverage
from impala_tf.envs.dmlab import dmlab30_coverage
from impala_tf.envs.factory import make_environment
from impala_tf.learning.process import LearnerProcess, learner_process
from impala_tf.rpc.security import local_dial_address
from impala_tf.run_config import RunConfig
from impala_tf.specs import observation_bounds, tensor_specs




DEFAULT_ACTORS = 2  # actor processes of a local run with actor inference (`Launcher`)


@gin.configurable
class Launcher:
    """Spawns local actor processes, restarts the ones that die, and stops them all.

    A watcher thread polls the processes; an actor that exits while the run goes on is
    restarted after a backoff that doubles with each quick death (from `restart_backoff_seconds`
    up to `max_restart_backoff_seconds`) and resets once it has lived `stable_after_seconds`.
    The learner keeps training with the actors it has meanwhile.

    Args:
      num_actors: actor processes to run on this machine. None: 2 with actor inference, and
        twice that with central inference: an environment actor waits for its actions about
        half the time, so twice as many keep the cores as busy (on our 2-core machine, 4
        environment actors ran central inference 1.2 times as fast as 2; docs/performance.md).
      inference: where the policy runs: 'actor' (the paper's: each actor process holds a
        copy of the agent and acts on its CPU, pulling parameters) or 'central' (SEED RL's:
        actor processes, `acting.env_actor`, only step environments and import no
        TensorFlow; the learner batches every actor's steps into one inference call on its
        device and assembles the unrolls, `central_inference`).
      restart_backoff_seconds, max_restart_backoff_seconds, stable_after_seconds: see above.
    """

    def __init__(self, num_actors: Optional[int] = None, inference: str = "actor",
                 restart_backoff_seconds: float = 1.0,
                 max_restart_backoff_seconds: float = 60.0, stable_after_seconds: float = 60.0):
        if inference not in INFERENCE_MODES:
            raise ValueError(f"Launcher.inference = {inference!r}: expected one of "
                             f"{', '.join(repr(m) for m in INFERENCE_MODES)}.")
        self.inference = inference
        self.num_actors = int(num_actors if num_actors is not None
                              else DEFAULT_ACTORS * (2 if inference == "central" else 1))
        self.restart_backoff_seconds = float(restart_backoff_seconds)
        self.max_restart_backoff_seconds = float(max_restart_backoff_seconds)
        self.stable_after_seconds = float(stable_after_seconds)
        self.processes: List[subprocess.Popen] = []
        self.first_actor_index = 0
        self.restarts = [0] * self.num_actors
        self._started_at: List[float] = []
        self._backoff: List[float] = []
        self._restart_at: List[Optional[float]] = []
        self._stopping = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._learner_step: Callable[[], int] = lambda: 0

    def start(self, learner_address: str, gin_files, gin_bindings, logdir: str,
              first_actor_index: int = 0,
              learner_step: Callable[[], int] = lambda: 0) -> None:
        """Spawns the actors, numbered from `first_actor_index` (learner worker w's are
        `w * num_actors + i`, so seeds and levels differ across workers). `learner_step`
        answers the run's step at each (re)spawn: actors seed from it past step 0."""
        self._learner_step = learner_step
        os.makedirs(os.path.join(logdir, "actors"), exist_ok=True)
        self._spawn_args = (learner_address, list(gin_files), list(gin_bindings), logdir)
        self.first_actor_index = int(first_actor_index)
        for i in range(self.num_actors):
            self.processes.append(self._spawn(i))
            self._started_at.append(time.time())
            self._backoff.append(self.restart_backoff_seconds)
            self._restart_at.append(None)
        self._watcher = threading.Thread(target=self._watch, name="actor-watcher", daemon=True)
        self._watcher.start()

    def _spawn(self, i: int) -> subprocess.Popen:
        learner_address, gin_files, gin_bindings, logdir = self._spawn_args
        actor_index = self.first_actor_index + i
        command = [sys.executable, "-m", "impala_tf.acting.process",
                   f"--inference={self.inference}",
                   f"--learner_address={learner_address}", f"--actor_index={actor_index}",
                   f"--parent_pid={os.getpid()}"]
        if self.inference == "actor":  # environment actors get their seeds from the learner
            command.append(f"--learner_step={int(self._learner_step())}")
        command += [f"--gin_file={f}" for f in gin_files]
        command += [f"--gin_bindings={b}" for b in gin_bindings]
        log = open(os.path.join(logdir, "actors", f"actor_{actor_index}.log"), "ab")
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        env[ACTORS_ON_HOST_VARIABLE] = str(self.num_actors)  # they share this host's cores
        try:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        finally:
            log.close()  # the child holds its own copy

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            self.check()

    def check(self, now: Optional[float] = None) -> None:
        """Schedules a restart for each dead actor and performs the ones that are due."""
        now = time.time() if now is None else now
        for i, process in enumerate(self.processes):
            if self._stopping.is_set():
                return
            if process.poll() is None:
                if now - self._started_at[i] >= self.stable_after_seconds:
                    self._backoff[i] = self.restart_backoff_seconds
                continue
            if self._restart_at[i] is None:
                delay = self._backoff[i]
                self._restart_at[i] = now + delay
                self._backoff[i] = min(2 * delay, self.max_restart_backoff_seconds)
                print(f"actor {self.first_actor_index + i} (pid {process.pid}) exited with "
                      f"code {process.returncode}; restarting it in {delay:.0f} s", flush=True)
            elif now >= self._restart_at[i]:
                self.processes[i] = self._spawn(i)
                self._started_at[i] = now
                self._restart_at[i] = None
                self.restarts[i] += 1
                print(f"actor {self.first_actor_index + i} restarted (pid "
                      f"{self.processes[i].pid}, restart {self.restarts[i]})", flush=True)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.processes)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL what is left after `timeout` seconds; reaps everything."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """One terminal line per log interval: frames, frames/s, recent return, lag, ETA.

    The ETA is the frames left over the rate measured since the first line, so start-up
    (graph tracing, actors connecting) does not count; the first line shows none. With `stop`
    and a `max_frames` or `max_minutes` budget, calls `stop()` once the budget is spent
    (checked at each log line) and keeps the reason in `stop_reason`."""

    def __init__(self, total_frames: float, max_frames: Optional[float] = None,
                 max_minutes: Optional[float] = None, stop: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.time):
        self.total = min(total_frames, max_frames) if max_frames else total_frames
        self.max_frames, self.max_minutes, self.stop, self.clock = (
            max_frames, max_minutes, stop, clock)
        self.deadline = clock() + 60.0 * max_minutes if max_minutes else None
        self.last_return = None
        self.stop_reason: Optional[str] = None
        self._first: Optional[tuple] = None  # (time, frames) at the first line

    def eta_seconds(self, frames: int, now: float) -> Optional[float]:
        """Seconds to `self.total` at the rate since the first line; None before a rate."""
        if self._first is None:
            return None
        t0, f0 = self._first
        if now <= t0 or frames <= f0:
            return None
        return max(0.0, (self.total - frames) * (now - t0) / (frames - f0))

    def __call__(self, record: dict) -> None:
        now, frames = self.clock(), int(record["env_frames"])
        if self.stop is not None and self.stop_reason is None:
            if self.max_frames and frames >= self.max_frames:
                self.stop_reason = f"--max_frames={self.max_frames:g} reached"
            elif self.deadline and now >= self.deadline:
                self.stop_reason = f"--max_minutes={self.max_minutes:g} elapsed"
            if self.stop_reason is not None:
                self.stop()
        if record.get("episode_return_mean") is not None:
            self.last_return = record["episode_return_mean"]
        eta = self.eta_seconds(frames, now)
        if self._first is None:
            self._first = (now, frames)
        ret = "n/a" if self.last_return is None else f"{self.last_return:8.2f}"
        lag = record.get("policy_lag_mean")
        print(f"frames {frames:>12,d} / {int(self.total):,d} "
              f"({100 * frames / self.total:5.1f}%) | {record['fps']:8,.0f} fps | "
              f"return {ret} ({record['episodes']} episodes) | "
              f"lag {'n/a' if lag is None else f'{lag:.1f}'} | "
              f"loss {record.get('total_loss', float('nan')):9.3f} | "
              f"ETA {'n/a' if eta is None else _format_duration(eta)}", flush=True)


def stop_reason(progress: Progress, signalled: Optional[str], env_frames: int,
                max_frames: Optional[float], total_frames: float) -> str:
    """Why a run that returned normally stopped, in words."""
    if signalled:
        return signalled
    if progress.stop_reason:
        return progress.stop_reason
    if max_frames and env_frames >= max_frames:
        return f"--max_frames={max_frames:g} reached"
    if env_frames >= total_frames:
        return f"RunConfig.total_environment_frames={total_frames:g} reached"
    return "stopped"


def build_learner(logdir: str, server_address: str, insecure: bool = False) -> LearnerProcess:
    """The learner process for the parsed gin config; the environment is built once for its
    specs and bounds. It accepts actor ids below `ActorEndpoint.num_actors`, by default
    `Launcher.num_actors` times the learner workers (set it when remote actors join)."""
    strategy = make_strategy()
    probe = make_environment(1)
    observation_spec = tensor_specs(probe.observation_spec())
    bounds = observation_bounds(probe.observation_spec())
    stacked = dict(probe.stacked_observations)
    num_actions = probe.action_spec().num_values
    probe.close()
    launcher = Launcher()
    num_actors = (None if gin_utils.is_bound("ActorEndpoint.num_actors")  # gin supplies it
                  else launcher.num_actors * num_workers(strategy))
    return learner_process(observation_spec, num_actions, logdir, strategy=strategy,
                           server_address=server_address, insecure=insecure,
                           num_actors=num_actors, observation_bounds=bounds,
                           stacked_observations=stacked, num_envs=configured_num_envs(),
                           actor_seed=configured_actor_seed(),
                           central=launcher.inference == "central")


def run_learner(logdir: str, bind: str, spawn_actors: bool, gin_files: Sequence[str] = (),
                gin_bindings: Sequence[str] = (), insecure: bool = False,
                max_frames: Optional[float] = None,
                max_minutes: Optional[float] = None,
                on_record: Optional[Callable[[dict, "LearnerProcess"], None]] = None) -> dict:
    """Trains until the configured frames, `max_frames`, `max_minutes`, SIGINT or SIGTERM,
    with a final checkpoint; with `spawn_actors`, `Launcher.num_actors` local actor processes
    started with `gin_files` and `gin_bindings`. `on_record(record, process)` is called with
    each metrics record, in the learner's loop (a PBT member reports through it). Returns the
    last metrics record."""
    process = build_learner(logdir, bind, insecure)
    learner = process.learner
    if learner.restored_from:
        print(f"resumed from {learner.restored_from}: step {learner.learner_step}, "
              f"{learner.env_frames:,d} frames", flush=True)
    launcher = Launcher() if spawn_actors else None

    signalled = []

    def on_signal(signum, _frame):
        signalled.append(f"{signal.Signals(signum).name} received")
        print(f"\n{signal.Signals(signum).name}: stopping (checkpoint, then actors)",
              flush=True)
        process.stop()

    # Signals reach the main thread only: a run in another thread (a PBT member, a Ray Tune
    # trial) is stopped by its caller instead.
    in_main = threading.current_thread() is threading.main_thread()
    previous = ({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                if in_main else {})
    print(f"learner listening on {process.address}; logdir {logdir}", flush=True)
    kind = gin_utils.bound_value("make_strategy.kind") or "default"
    print(f"learner strategy {learner.split.describe(kind)}", flush=True)
    kind = gin_utils.bound_value("make_environment.kind")
    dmlab30 = kind == "dmlab" and gin_utils.bound_value("make_dmlab.dmlab30")
    if dmlab30 or kind == "atari_multitask":
        actors, envs = process.endpoint.validator.num_actors, configured_num_envs()
        print(dmlab30_coverage(actors, envs) if kind == "dmlab" else
              multitask_coverage(actors, envs, learner.agent.num_tasks), flush=True)
    try:
        if launcher is not None:
            first = learner.worker.index * launcher.num_actors
            launcher.start(local_dial_address(process.address), gin_files, gin_bindings,
                           logdir, first_actor_index=first,
                           learner_step=lambda: learner.learner_step)
            print(f"started {launcher.num_actors} actor processes (actors {first} to "
                  f"{first + launcher.num_actors - 1})", flush=True)
        total = RunConfig().total_environment_frames
        progress = Progress(total, max_frames, max_minutes, stop=process.stop)

        def each_record(record: dict) -> None:
            progress(record)
            if on_record is not None:
                on_record(record, process)

        record = process.run(max_frames=max_frames, progress=each_record)
        reason = stop_reason(progress, signalled[0] if signalled else None,
                             learner.env_frames, max_frames, total)
        print(f"done ({reason}): {learner.env_frames:,d} frames, {learner.learner_step} "
              f"steps; checkpoint in {learner.checkpoint_dir}", flush=True)
        return record
    finally:
        if launcher is not None:
            launcher.stop()
        process.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
