"""The learner under an outside attack and in a hostile place, for real (gRPC on loopback,
processes, a full disk): valid-spec poison is rejected and training goes on; poison that
gets past the bounds is traced to its actor, which is refused; two learners cannot share a
logdir or a port; a full disk stops the run with one line; metrics stay strict JSON."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from impala_tf import config
from impala_tf.learning.faults import DiskFullError, is_disk_full
from impala_tf.learning.process import learner_process
from impala_tf.learning.metrics import MetricsLog, json_safe
from impala_tf.learning.logdir_lock import LogdirInUseError
from impala_tf.rpc import codec
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.server import PortInUseError

from deadlines import run_learner, run_learner_until
from test_learner import RUN, SPEC, _small_agent  # noqa: F401 (the autouse fixture)

HERE = os.path.dirname(os.path.abspath(__file__))


def _learner(logdir, **kwargs):
    kwargs.setdefault("log_every_seconds", 0.0)
    kwargs.setdefault("num_actors", 8)
    return learner_process(SPEC, 3, str(logdir), run_config=RUN, **kwargs)


def _unroll(learner, rng, actor_id=0, **overrides):
    fields = {}
    for name, (dtype, shape) in codec.spec_from_tensor_specs(learner.endpoint.wire_spec).items():
        if name == "action":
            fields[name] = rng.integers(0, 3, shape).astype(dtype)
        elif name == "discount":
            fields[name] = np.ones(shape, dtype)
        elif dtype == np.bool_:
            fields[name] = np.zeros(shape, bool)
        elif dtype == np.uint8:
            fields[name] = rng.integers(0, 256, shape).astype(dtype)
        else:
            fields[name] = rng.normal(size=shape).astype(dtype)
    fields.update(overrides)
    return codec.encode(codec.UNROLL_MAGIC, fields,
                        {"policy_version": 0, "actor_id": actor_id,
                         "episodes": [[1.0, 9, "catch"]]})


class _Streams:
    """Threads that each stream unrolls from `make(rng)` until stopped."""

    def __init__(self, address, makers):
        self.stop = threading.Event()
        self.clients = [LearnerClient(address, backoff_seconds=0.05) for _ in makers]
        self.threads = [threading.Thread(target=self._run, args=(c, m, i), daemon=True)
                        for i, (c, m) in enumerate(zip(self.clients, makers))]
        for thread in self.threads:
            thread.start()

    def _run(self, client, make, seed):
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            client.send_unroll(make(rng), self.stop)

    def close(self):
        self.stop.set()
        for client in self.clients:
            client.close(flush=False)


def test_valid_spec_poison_is_rejected_and_training_goes_on(tmp_path):
    """The attack: discounts of 1e30, 3.4e38 and -1e30 over 8 streams passed validation
    and made 100 skipped updates in a row, and the learner exited."""
    learner = _learner(tmp_path, max_consecutive_nonfinite_updates=2)
    poison = [np.full(5, d, np.float32) for d in (1e30, 3.4e38, -1e30)]
    makers = [lambda rng, d=poison[i % 3]: _unroll(learner, rng, actor_id=1 + i % 7, discount=d)
              for i in range(8)]
    makers.append(lambda rng: _unroll(learner, rng, actor_id=0))
    streams = _Streams(learner.address, makers)
    try:
        record = run_learner(learner, 6, 120, "the honest actor's batches")
    finally:
        streams.close()
        learner.close()
    assert learner.learner_step == 6 and learner.learner.nonfinite_updates == 0
    assert learner.service.counters.rejected >= 8
    assert all("'discount': values outside [0, 1]" in reason
               for reason in learner.service.counters.rejected_reasons)
    assert set(learner.service.counters.by_actor()) == {"0"}
    assert np.isfinite(record["total_loss"])


def test_poison_past_the_bounds_is_traced_to_its_actor_which_is_refused(tmp_path):
    """The second line of defence: with the reward bound switched off and no reward
    clipping, rewards of 3e38 make non-finite updates. Each is traced to the actor whose
    unrolls alone give non-finite gradients; that actor is refused, the honest one is not,
    and the run goes on past `max_consecutive_nonfinite_updates`."""
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8",
                             "make_optimizer.learning_rate = 0.01",
                             "UnrollLimits.max_abs_reward = None",
                             "TrainStep.reward_clipping = 'none'"])
    learner = _learner(tmp_path, max_consecutive_nonfinite_updates=1)
    poisoned = np.full(5, 3e38, np.float32)
    streams = _Streams(learner.address, [
        lambda rng: _unroll(learner, rng, actor_id=5, reward=poisoned),
        lambda rng: _unroll(learner, rng, actor_id=0),
        lambda rng: _unroll(learner, rng, actor_id=2)])
    try:  # fails within 120 s (naming the wait), not at pytest's timeout, if batches stop
        record = run_learner_until(learner, lambda: learner.learner_step >= 4, 120,
                                   "4 finite updates once actor 5 is refused")
    finally:
        streams.close()
        learner.close()
    assert learner.learner_step >= 4
    assert learner.learner.nonfinite_updates >= 1  # poison reached the step before the refusal
    assert learner.service.validator.refused == [5]
    assert record["refused_actors"] == [5]
    assert any("actor 5 is refused" in r for r in learner.service.counters.rejected_reasons)
    for weight in learner.agent.get_weights():
        assert np.all(np.isfinite(weight))


def test_a_second_learner_on_a_live_logdir_is_refused_and_one_after_it_starts(tmp_path):
    first = _learner(tmp_path, batch_source=lambda: None)
    with pytest.raises(LogdirInUseError, match=f"in use by a live learner \\(pid {os.getpid()}"):
        _learner(tmp_path, batch_source=lambda: None)
    first.close()
    _learner(tmp_path, batch_source=lambda: None).close()


def test_a_killed_learner_leaves_no_lock_behind(tmp_path):
    code = (
        "import sys, time\nsys.path.insert(0, %r)\nimport test_learner_defences as t\n"
        "from impala_tf import config\n"
        "config.parse_config([], ['Agent.torso = \"mlp\"', 'Agent.lstm_size = 8'])\n"
        "t._learner(%r, batch_source=lambda: None)\nprint('ready', flush=True)\n"
        "time.sleep(300)\n" % (HERE, str(tmp_path)))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    try:
        assert process.stdout.readline().strip() == "ready"
        with pytest.raises(LogdirInUseError, match=f"pid {process.pid}"):
            _learner(tmp_path, batch_source=lambda: None)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    _learner(tmp_path, batch_source=lambda: None).close()  # the kernel dropped the lock


def test_a_second_learner_on_a_taken_port_is_refused(tmp_path):
    """gRPC's default SO_REUSEPORT let it start silently and take half the connections."""
    first = _learner(tmp_path / "a")
    try:
        with pytest.raises(PortInUseError, match=f"port {first.address.rsplit(':', 1)[1]} is "
                                                 "in use"):
            _learner(tmp_path / "b", server_address=first.address)
        _learner(tmp_path / "b", batch_source=lambda: None).close()  # its logdir was freed
    finally:
        first.close()
    with socket.socket() as held:  # any process's socket, not only a learner's
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(PortInUseError):
            _learner(tmp_path / "c", server_address=f"127.0.0.1:{held.getsockname()[1]}")


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1", ":80"])
def test_a_malformed_port_is_an_error_not_another_port(tmp_path, address):
    """--bind=127.0.0.1:99999 listened on port 34463."""
    with pytest.raises(ValueError, match="port must be a number from 0 to 65535|HOST:PORT"):
        _learner(tmp_path, server_address=address)


def test_the_training_command_refuses_a_live_logdir_in_one_line(tmp_path):
    holder = _learner(tmp_path, batch_source=lambda: None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin",
             f"--logdir={tmp_path}"], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    finally:
        holder.close()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert f"is in use by a live learner (pid {os.getpid()}" in lines[0]


def test_the_training_command_rejects_a_bad_bind_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin",
         f"--logdir={tmp_path}", "--bind=127.0.0.1:99999"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode != 0
    assert "--bind: '127.0.0.1:99999': the port must be a number from 0 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def _synthetic_source():
    from impala_tf.learning.batcher import ReadyBatch
    from impala_tf.networks import Agent
    from impala_tf.synthetic import synthetic_batch
    batch = synthetic_batch(Agent(3, SPEC, torso="mlp", lstm_size=8), SPEC,
                            RUN.unroll_length, RUN.batch_size, 0.2, 0)
    return lambda: ReadyBatch(batch, np.zeros(RUN.batch_size, np.int64))


def test_a_full_disk_under_the_metrics_stops_the_run_with_one_line(tmp_path):
    os.symlink("/dev/full", tmp_path / "metrics.jsonl")  # every write: ENOSPC
    learner = _learner(tmp_path, batch_source=_synthetic_source())
    with pytest.raises(DiskFullError) as error:
        learner.run(max_steps=3)
    message = str(error.value)
    assert "\n" not in message and "No space left on the device" in message
    assert "a final checkpoint went to" in message and "run the same command again" in message
    learner.close()
    assert _learner(tmp_path, batch_source=_synthetic_source()).learner.restored_from


def _mount_tmpfs(path, size):
    os.makedirs(path)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


def test_a_full_disk_stops_the_run_with_one_line_and_a_restart_resumes(tmp_path):
    """A real full file system (tmpfs, root only): the learner's writers (TensorBoard's,
    checkpoints, metrics.jsonl) meet ENOSPC; the run stops with one line and the last
    whole checkpoint resumes once there is space."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        logdir = disk / "run"
        learner = _learner(logdir, batch_source=_synthetic_source())
        learner.run(max_steps=2)
        with open(disk / "filler", "wb") as filler:  # fill the disk to the last byte
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        with pytest.raises(DiskFullError) as error:
            learner.run(max_steps=3)
        assert "\n" not in str(error.value) and "No space left" in str(error.value)
        learner.close()
        os.remove(disk / "filler")
        resumed = _learner(logdir, batch_source=_synthetic_source())
        assert resumed.learner_step >= 2
        resumed.run(max_steps=1)
        resumed.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_is_told_apart_from_other_errors():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(tf.errors.OpError) as error:
        tf.io.write_file("/dev/full", b"x" * 100_000)
    assert is_disk_full(error.value)


def test_metrics_stay_strict_json_whatever_the_numbers(tmp_path):
    log = MetricsLog(str(tmp_path), write_summaries=True)
    log.write({"env_frames": 1, "episode_return_mean": float("inf"), "loss": float("nan"),
               "per_level": {"a": float("-inf"), "b": 1.5}, "ok": 2.0})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    assert record == {"env_frames": 1, "episode_return_mean": None, "loss": None,
                      "per_level": {"a": None, "b": 1.5}, "ok": 2.0}
    assert json_safe([1.0, float("nan")]) == [1.0, None]


def test_an_orphaned_actor_does_not_say_the_learner_answers_when_it_stops(caplog):
    """It logged 'learner answers again' on its way out, with no learner there."""
    config.parse_config(["catch.gin"], ["Actor.num_envs = 1",
                                        "Actor.reconnect_backoff_seconds = 0.1"])
    from impala_tf.acting.actor import Actor
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    actor = Actor(f"127.0.0.1:{port}", rpc_timeout_seconds=0.5)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    with caplog.at_level(logging.WARNING):
        assert actor.refresh_parameters(stop) is False
    actor.close(flush=False)
    assert "unreachable" in caplog.text
    assert "answers again" not in caplog.text and actor.reconnects == 0


def test_the_tpu_strategy_without_a_tpu_fails_at_start_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin", f"--logdir={tmp_path}",
         "--gin_bindings=make_strategy.kind = 'tpu'"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("impala_tf: make_strategy.kind = 'tpu' "
                                                         "found no TPU"), result.stderr[-2000:]


def test_tracing_names_only_the_poisoned_unrolls_actor_under_mirrored(tmp_path):
    """Mirrored over 2 logical CPUs: a batch whose third unroll (actor 7) has NaN behaviour
    logits is skipped, traced to actor 7 alone, and the next clean batch trains."""
    from impala_tf.learning.batcher import ReadyBatch
    from impala_tf.distribute import make_strategy
    from impala_tf.networks import Agent
    from impala_tf.synthetic import synthetic_batch
    batch = synthetic_batch(Agent(3, SPEC, torso="mlp", lstm_size=8), SPEC,
                            RUN.unroll_length, RUN.batch_size, 0.2, 0)
    logits = batch.trajectory.behaviour_logits.numpy()
    logits[:, 2] = np.nan
    poisoned = batch._replace(trajectory=batch.trajectory._replace(
        behaviour_logits=tf.constant(logits)))
    actors = np.array([4, 5, 7, 4], np.int64)
    sequence = iter([ReadyBatch(poisoned, np.zeros(4, np.int64), actors),
                     ReadyBatch(batch, np.zeros(4, np.int64), actors)])
    learner = _learner(tmp_path, batch_source=lambda: next(sequence),
                       max_consecutive_nonfinite_updates=1,
                       strategy=make_strategy("mirrored", num_cpu_devices=2))
    learner.run(max_steps=2)
    learner.close()
    assert learner.service.validator.refused == [7]
    assert learner.learner.nonfinite_updates == 1 and learner.learner_step == 1
