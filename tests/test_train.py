"""The training command's pieces: the actor launcher's restart backoff and the run budget."""

import os
import re
import subprocess
import sys
from pathlib import Path

import gin

from impala_tf import config
from impala_tf.run_config import RunConfig
from impala_tf.launcher import Launcher, Progress, stop_reason


class _FakeProcess:
    count = 0

    def __init__(self):
        _FakeProcess.count += 1
        self.pid = _FakeProcess.count
        self.returncode = None

    def poll(self):
        return self.returncode


def _launcher(num_actors=2):
    launcher = Launcher(num_actors, restart_backoff_seconds=1.0, max_restart_backoff_seconds=4.0,
                        stable_after_seconds=30.0)
    launcher._spawn = lambda i: _FakeProcess()
    launcher.processes = [_FakeProcess() for _ in range(num_actors)]
    launcher._started_at = [0.0] * num_actors
    launcher._backoff = [1.0] * num_actors
    launcher._restart_at = [None] * num_actors
    return launcher


def test_a_dead_actor_restarts_after_a_backoff_that_doubles_and_resets():
    launcher = _launcher()
    first = launcher.processes[0]
    first.returncode = -9
    launcher.check(now=10.0)                 # death seen: restart due at 11
    assert launcher.processes[0] is first
    launcher.check(now=10.5)
    assert launcher.processes[0] is first
    launcher.check(now=11.0)                 # restarted
    second = launcher.processes[0]
    assert second is not first and launcher.restarts == [1, 0]
    delays = []
    now = 11.0
    for _ in range(4):                       # quick deaths: 2, 4, 4 (capped), 4 s
        launcher.processes[0].returncode = 1
        launcher.check(now=now)
        due = launcher._restart_at[0]
        delays.append(due - now)
        launcher.check(now=due)
        now = due
    assert delays == [2.0, 4.0, 4.0, 4.0]
    launcher.check(now=now + 30.0)           # lived 30 s: the backoff resets
    launcher.processes[0].returncode = 1
    launcher.check(now=now + 31.0)
    assert launcher._restart_at[0] - (now + 31.0) == 1.0
    assert launcher.processes[1].poll() is None and launcher.restarts[1] == 0


def test_no_restart_once_stopping():
    launcher = _launcher(1)
    launcher._stopping.set()
    launcher.processes[0].returncode = 1
    launcher.check(now=5.0)
    launcher.check(now=100.0)
    assert launcher.restarts == [0] and launcher._restart_at == [None]


def _record(frames):
    return {"env_frames": frames, "fps": 100.0, "episodes": 0, "episode_return_mean": None}


def test_progress_stops_the_run_at_its_frame_budget_and_says_why(capsys):
    stops = []
    progress = Progress(1e9, max_frames=1000, stop=lambda: stops.append(1))
    progress(_record(500))
    assert not stops and progress.stop_reason is None
    progress(_record(1200))
    assert stops == [1] and progress.stop_reason == "--max_frames=1000 reached"
    assert "1,200 / 1,000" in capsys.readouterr().out  # the ETA counts down to the budget
    assert stop_reason(progress, None, 1200, 1000, 1e9) == "--max_frames=1000 reached"
    assert stop_reason(progress, "SIGINT received", 1200, 1000, 1e9) == "SIGINT received"
    assert stop_reason(Progress(50), None, 60, None, 50) == \
        "RunConfig.total_environment_frames=50 reached"


def test_progress_stops_the_run_after_its_wall_time():
    stops, now = [], [1000.0]
    progress = Progress(1e9, max_minutes=2, stop=lambda: stops.append(1),
                        clock=lambda: now[0])
    progress(_record(10))
    now[0] += 119.9
    progress(_record(20))
    assert not stops
    now[0] += 0.1
    progress(_record(30))
    assert stops == [1] and progress.stop_reason == "--max_minutes=2 elapsed"
    progress(_record(40))
    assert stops == [1]  # asked once


def test_the_eta_leaves_start_up_out(capsys):
    """The first line (after graph tracing and actors connecting) has no ETA; later ones use
    the rate since it, however slow the start was."""
    now = [0.0]
    progress = Progress(100_000, clock=lambda: now[0])
    now[0] = 60.0  # a minute of start-up for the first 1,000 frames
    progress(dict(_record(1_000), fps=1_000 / 60))
    now[0] = 70.0  # then 1,000 frames/s
    progress(dict(_record(11_000), fps=1_000.0))
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("ETA n/a")
    assert second.endswith("ETA 1m29s")  # 89,000 frames left at 1,000 frames/s


def test_make_train_runs_a_described_pong_experiment():
    """`make train`'s experiment is Pong with one update per batch, and its opening comment
    (printed first by the command) says what return to expect and where the paper's is."""
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    gin_file = re.search(r"^GIN_FILE \?= (\S+)$", makefile, re.M).group(1)
    assert "--gin_file=$(GIN_FILE)" in makefile
    description = config.describe_experiment(gin_file)
    assert "one update per batch" in description and "Expect" in description
    assert "atari/pong_shallow.gin" in description  # the paper's exact setting, one file away
    config.parse_config([gin_file])
    try:
        assert gin.query_parameter("AtariBatchedEnv.game") == "pong"
        assert RunConfig().updates_per_batch == 1  # no sample reuse
    finally:
        gin.clear_config()


def test_make_train_ends_at_its_measured_budget_with_an_evaluation_and_a_curve():
    """12M frames (what its result was measured on), then evaluate and plot into LOGDIR;
    the paper's budget is one variable away."""
    root = Path(__file__).resolve().parent.parent
    dry = subprocess.run(["make", "-n", "train"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    assert "--max_frames=12e6" in dry
    assert re.search(r"-m impala_tf.evaluate --logdir=(\S+)", dry).group(1) == \
        re.search(r"-m impala_tf.train .*--logdir=(\S+)", dry).group(1)
    assert "-m impala_tf.plot logs/" in dry and "curves.png" in dry
    paper = subprocess.run(["make", "-n", "train", "FRAMES=2e8"], cwd=root,
                           capture_output=True, text=True, check=True).stdout
    assert "--max_frames=2e8" in paper


# TensorFlow's C++ start-up lines: absl's notice, glog-style prefixes, oneDNN and CUDA probes.
_CPP_LOGGING = re.compile(r"absl::InitializeLog|^[IWEF]\d{4} |oneDNN|cuInit|cudart_stub",
                          re.M)


def test_the_first_screen_holds_only_our_own_lines():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("IMPALA_TF_VERBOSE", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # A gin file that does not exist: TensorFlow is imported, then the run stops in one line.
    command = [sys.executable, "-m", "impala_tf.train", "--gin_file=catchh.gin", "--logdir=x"]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert "did you mean catch.gin" in quiet.stderr
    assert not _CPP_LOGGING.search(quiet.stdout + quiet.stderr), quiet.stderr[:2000]
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert _CPP_LOGGING.search(verbose.stderr)  # --verbose brings it back


def test_each_learner_workers_actors_have_their_own_global_indices(tmp_path, monkeypatch):
    """Worker w's actor i is w * num_actors + i, so seeds and levels differ by worker; each
    actor is told how many actors share its host (its ALE threads follow from that)."""
    commands, environments = [], []

    class _Popen(_FakeProcess):
        def __init__(self, command, **kwargs):
            super().__init__()
            commands.append(command)
            environments.append(kwargs["env"])

    monkeypatch.setattr("impala_tf.launcher.subprocess.Popen", _Popen)
    launcher = Launcher(3)
    launcher.start("127.0.0.1:1", ["catch.gin"], [], str(tmp_path), first_actor_index=2 * 3)
    launcher._stopping.set()
    indices = [int(re.search(r"--actor_index=(\d+)", " ".join(c)).group(1)) for c in commands]
    assert indices == [6, 7, 8]
    assert [e["IMPALA_TF_ACTORS_ON_HOST"] for e in environments] == ["3", "3", "3"]
    assert sorted(p.name for p in (tmp_path / "actors").iterdir()) == [
        "actor_6.log", "actor_7.log", "actor_8.log"]


def test_actors_spawned_later_in_a_run_are_told_its_step(tmp_path, monkeypatch):
    """A resumed run's actors, and an actor restarted mid-run, seed from the learner's step
    at their spawn (`--learner_step`), not from step 0 again."""
    commands = []

    class _Popen(_FakeProcess):
        def __init__(self, command, **kwargs):
            super().__init__()
            commands.append(command)

    monkeypatch.setattr("impala_tf.launcher.subprocess.Popen", _Popen)
    step = [1200]
    launcher = Launcher(2, restart_backoff_seconds=0.0)
    launcher.start("127.0.0.1:1", ["catch.gin"], [], str(tmp_path),
                   learner_step=lambda: step[0])
    launcher._stopping.set()
    assert [next(a for a in c if a.startswith("--learner_step=")) for c in commands] == \
        ["--learner_step=1200"] * 2
    launcher._stopping.clear()
    step[0] = 3400
    launcher.processes[1].returncode = 1
    launcher.check(now=launcher._started_at[1] + 1.0)  # schedules the restart
    launcher.check(now=launcher._started_at[1] + 2.0)  # performs it
    assert "--learner_step=3400" in commands[-1] and "--actor_index=1" in commands[-1]
    central = Launcher(1, inference="central")
    central.start("127.0.0.1:1", [], [], str(tmp_path), learner_step=lambda: 9)
    central._stopping.set()
    assert not any(a.startswith("--learner_step") for a in commands[-1])  # seeded by the learner
