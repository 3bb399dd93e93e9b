"""One training command: the learner plus actor processes, or either half on its own.

    python -m impala_tf.train --gin_file=atari/experts_shallow.gin --logdir=/tmp/pong
    python -m impala_tf.train --role=learner --gin_file=F --logdir=DIR --bind=0.0.0.0:8470
    python -m impala_tf.train --role=actor --gin_file=F --learner_address=HOST:8470 --actor_index=3

`--role=all` (the default) starts the learner in this process and spawns
`Launcher.num_actors` actor processes on this machine (gRPC over loopback), prints progress
(frames, frames/s, recent return, ETA), restarts an actor that dies (with backoff), and stops
at the configured total frames, at `--max_frames` / `--max_minutes`, or on Ctrl-C / SIGTERM,
with a final checkpoint and no actor process left behind. A run restarted
with the same logdir resumes from its latest checkpoint.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

import gin
from absl import app, flags

import impala_tf  # noqa: F401  (sets the Keras backend)
from impala_tf import config, gin_utils, quiet
from impala_tf.distribute import NoTPUError, make_strategy, num_workers
from impala_tf.envs.atari import ACTORS_ON_HOST_VARIABLE
from impala_tf.envs.atari_multitask import multitask_coverage
from impala_tf.envs.dmlab import dmlab30_coverage
from impala_tf.envs.factory import make_environment
from impala_tf.learner import DiskFullError, Learner, WorkerLostError
from impala_tf.logdir_lock import LogdirInUseError
from impala_tf.rpc.security import SecurityError, local_dial_address, split_address
from impala_tf.rpc.server import PortInUseError
from impala_tf.run_config import RunConfig
from impala_tf.specs import observation_bounds, tensor_specs

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files (see experiments/).")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_string("logdir", None, "Run directory (checkpoints, metrics, summaries).")
    flags.DEFINE_enum("role", "all", ["all", "learner", "actor"], "What this process runs.")
    flags.DEFINE_string("bind", "127.0.0.1:0", "Learner: host:port to listen on. Any address "
                        "but loopback needs TLS and a token (Security.*), or --insecure.")
    flags.DEFINE_bool("insecure", False, "Learner: allow a non-loopback --bind without TLS "
                      "and a token (prints a warning).")
    flags.DEFINE_string("learner_address", None, "Actor: host:port of the learner.")
    flags.DEFINE_integer("actor_index", 0, "Actor: this actor's number.")
    flags.DEFINE_float("max_frames", None, "Stop (with a checkpoint) after this many frames; "
                       "unlike RunConfig.total_environment_frames it leaves the lr schedule be.")
    flags.DEFINE_float("max_minutes", None, "Stop (with a checkpoint) after this wall time.")


INFERENCE_MODES = ("actor", "central")


@gin.configurable
class Launcher:
    """Spawns local actor processes, restarts the ones that die, and stops them all.

    A watcher thread polls the processes; an actor that exits while the run goes on is
    restarted after a backoff that doubles with each quick death (from `restart_backoff_seconds`
    up to `max_restart_backoff_seconds`) and resets once it has lived `stable_after_seconds`.
    The learner keeps training with the actors it has meanwhile.

    Args:
      num_actors: actor processes to run on this machine.
      inference: where the policy runs: 'actor' (the paper's: each actor process holds a
        copy of the agent and acts on its CPU, pulling parameters) or 'central' (SEED RL's:
        actor processes, `impala_tf.env_actor`, only step environments and import no
        TensorFlow; the learner batches every actor's steps into one inference call on its
        device and assembles the unrolls, `central_inference`).
      restart_backoff_seconds, max_restart_backoff_seconds, stable_after_seconds: see above.
    """

    def __init__(self, num_actors: int = 2, inference: str = "actor",
                 restart_backoff_seconds: float = 1.0,
                 max_restart_backoff_seconds: float = 60.0, stable_after_seconds: float = 60.0):
        if inference not in INFERENCE_MODES:
            raise ValueError(f"Launcher.inference = {inference!r}: expected one of "
                             f"{', '.join(repr(m) for m in INFERENCE_MODES)}.")
        self.num_actors = int(num_actors)
        self.inference = inference
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

    def start(self, learner_address: str, gin_files, gin_bindings, logdir: str,
              first_actor_index: int = 0) -> None:
        """Spawns the actors, numbered from `first_actor_index` (learner worker w's are
        `w * num_actors + i`, so seeds and levels differ across workers)."""
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
        module = "impala_tf.env_actor" if self.inference == "central" else "impala_tf.actor"
        command = [sys.executable, "-m", module,
                   f"--learner_address={learner_address}", f"--actor_index={actor_index}",
                   f"--parent_pid={os.getpid()}"]
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

    With `stop` and a `max_frames` or `max_minutes` budget, calls `stop()` once the budget is
    spent (checked at each log line)."""

    def __init__(self, total_frames: float, max_frames: Optional[float] = None,
                 max_minutes: Optional[float] = None, stop: Optional[Callable[[], None]] = None):
        self.total = min(total_frames, max_frames) if max_frames else total_frames
        self.max_frames, self.stop = max_frames, stop
        self.deadline = time.time() + 60.0 * max_minutes if max_minutes else None
        self.last_return = None

    def __call__(self, record: dict) -> None:
        if self.stop is not None and (
                (self.max_frames and record["env_frames"] >= self.max_frames)
                or (self.deadline and time.time() >= self.deadline)):
            self.stop()
        if record.get("episode_return_mean") is not None:
            self.last_return = record["episode_return_mean"]
        fps = record["fps"]
        left = (self.total - record["env_frames"]) / fps if fps > 0 else float("inf")
        ret = "n/a" if self.last_return is None else f"{self.last_return:8.2f}"
        lag = record.get("policy_lag_mean")
        print(f"frames {record['env_frames']:>12,d} / {int(self.total):,d} "
              f"({100 * record['env_frames'] / self.total:5.1f}%) | {fps:8,.0f} fps | "
              f"return {ret} ({record['episodes']} episodes) | "
              f"lag {'n/a' if lag is None else f'{lag:.1f}'} | "
              f"loss {record.get('total_loss', float('nan')):9.3f} | "
              f"ETA {_format_duration(left) if left != float('inf') else 'n/a'}", flush=True)


def build_learner(logdir: str, server_address: str, insecure: bool = False) -> Learner:
    """The learner for the parsed gin config; the environment is built once for its specs
    and bounds. It accepts actor ids below `Learner.num_actors`, by default
    `Launcher.num_actors` times the learner workers (set it when remote actors join)."""
    strategy = make_strategy()
    probe = make_environment(1)
    observation_spec = tensor_specs(probe.observation_spec())
    bounds = observation_bounds(probe.observation_spec())
    stacked = dict(probe.stacked_observations)
    num_actions = probe.action_spec().num_values
    probe.close()
    kwargs = {}
    launcher = Launcher()
    if not gin_utils.is_bound("Learner.num_actors"):  # else gin supplies it
        kwargs["num_actors"] = launcher.num_actors * num_workers(strategy)
    from impala_tf.actor import configured_num_envs
    return Learner(observation_spec, num_actions, logdir, strategy=strategy,
                   server_address=server_address, insecure=insecure,
                   observation_bounds=bounds, stacked_observations=stacked,
                   num_envs=configured_num_envs(),
                   central=launcher.inference == "central", **kwargs)



def run_learner(logdir: str, bind: str, spawn_actors: bool) -> dict:
    learner = build_learner(logdir, bind, FLAGS.insecure)
    if learner.restored_from:
        print(f"resumed from {learner.restored_from}: step {learner.learner_step}, "
              f"{learner.env_frames:,d} frames", flush=True)
    launcher = Launcher() if spawn_actors else None

    def on_signal(signum, _frame):
        print(f"\n{signal.Signals(signum).name}: stopping (checkpoint, then actors)",
              flush=True)
        learner.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"learner listening on {learner.address}; logdir {logdir}", flush=True)
    kind = gin_utils.bound_value("make_environment.kind")
    dmlab30 = kind == "dmlab" and gin_utils.bound_value("make_dmlab.dmlab30")
    if dmlab30 or kind == "atari_multitask":
        from impala_tf.actor import configured_num_envs
        actors, envs = learner.service.validator.num_actors, configured_num_envs()
        print(dmlab30_coverage(actors, envs) if kind == "dmlab" else
              multitask_coverage(actors, envs, learner.agent.num_tasks), flush=True)
    try:
        if launcher is not None:
            first = learner.worker.index * launcher.num_actors
            launcher.start(local_dial_address(learner.address), FLAGS.gin_file,
                           FLAGS.gin_bindings, logdir, first_actor_index=first)
            print(f"started {launcher.num_actors} actor processes (actors {first} to "
                  f"{first + launcher.num_actors - 1})", flush=True)
        record = learner.run(max_frames=FLAGS.max_frames, progress=Progress(
            RunConfig().total_environment_frames, FLAGS.max_frames, FLAGS.max_minutes,
            stop=learner.stop))
        print(f"done: {learner.env_frames:,d} frames, {learner.learner_step} steps; "
              f"checkpoint in {learner.checkpoint_dir}", flush=True)
        return record
    finally:
        if launcher is not None:
            launcher.stop()
        learner.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv) -> None:
    del argv
    try:
        config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    except config.GinFileNotFoundError as error:
        sys.exit(f"impala_tf: {error}")
    if FLAGS.role == "actor":
        if not FLAGS.learner_address:
            raise app.UsageError("--role=actor needs --learner_address=HOST:PORT.")
        if Launcher().inference == "central":
            from impala_tf.env_actor import run_env_actor_process
            run_env_actor_process(FLAGS.learner_address, FLAGS.actor_index)
        else:
            from impala_tf.actor import run_actor_process
            run_actor_process(FLAGS.learner_address, FLAGS.actor_index)
        return
    if not FLAGS.logdir:
        raise app.UsageError("--logdir is required.")
    try:
        split_address(FLAGS.bind)
    except ValueError as error:
        raise app.UsageError(f"--bind: {error}") from None
    for gin_file in FLAGS.gin_file:  # what the experiment is and what it should reach
        description = config.describe_experiment(gin_file)
        if description:
            print(f"== {gin_file}\n{description}\n", flush=True)
    try:
        run_learner(FLAGS.logdir, FLAGS.bind, spawn_actors=FLAGS.role == "all")
    except SecurityError as error:
        raise app.UsageError(str(error)) from None
    except (LogdirInUseError, PortInUseError, DiskFullError, NoTPUError,
            WorkerLostError) as error:
        # One line: gin appends "In call to configurable ..." to errors raised in its calls.
        sys.exit(f"impala_tf: {str(error).splitlines()[0]}")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
