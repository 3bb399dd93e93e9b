"""The learner: trains on streamed unrolls while rejecting malformed ones, mirrored equals
default, resumes from checkpoints, publishes versioned parameters, writes its metrics."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from deadlines import run_learner
from impala_tf import config
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.learning.batcher import ReadyBatch
from impala_tf.distribute import make_strategy
from impala_tf.learning.faults import NonFiniteUpdatesError
from impala_tf.learning.process import learner_process
from impala_tf.networks import Agent
from impala_tf.rpc import codec
from impala_tf.rpc.client import LearnerClient
from impala_tf.run_config import RunConfig
from impala_tf.specs import LearnerBatch
from impala_tf.synthetic import synthetic_batch

SPEC = {"frame": tf.TensorSpec([10, 5, 1], tf.uint8)}
RUN = RunConfig(unroll_length=4, batch_size=4, total_environment_frames=1e6,
                num_action_repeats=1)


@pytest.fixture(autouse=True)
def _small_agent():
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8",
                             "make_optimizer.learning_rate = 0.01"])
    yield
    gin.clear_config()


def _learner(logdir, **kwargs):
    kwargs.setdefault("log_every_seconds", 0.0)
    return learner_process(SPEC, 3, str(logdir), run_config=RUN, **kwargs)


def _random_unroll(learner, rng, version=0, episodes=(), **overrides):
    fields = {}
    for name, (dtype, shape) in codec.spec_from_tensor_specs(learner.endpoint.wire_spec).items():
        if name == "action":
            fields[name] = rng.integers(0, 3, shape).astype(dtype)
        elif name == "discount":
            fields[name] = (rng.random(shape) < 0.9).astype(dtype)
        elif dtype == np.bool_:
            fields[name] = rng.random(shape) < 0.2
        elif dtype == np.uint8:
            fields[name] = rng.integers(0, 256, shape).astype(dtype)
        else:
            fields[name] = rng.normal(size=shape).astype(dtype)
    fields.update(overrides)
    meta = {"policy_version": version, "actor_id": 0,
            "episodes": [list(e) for e in episodes] or [[1.0, 9, "catch"]]}
    return codec.encode(codec.UNROLL_MAGIC, fields, meta)


def test_a_malformed_unroll_is_rejected_while_training_goes_on(tmp_path):
    learner = _learner(tmp_path)
    client = LearnerClient(learner.address, backoff_seconds=0.05)
    rng = np.random.default_rng(0)
    stop = threading.Event()

    def actor():
        i = 0
        while not stop.is_set():
            bad = i == 3
            reward = np.full(5, np.nan, np.float32) if bad else rng.normal(size=5).astype(np.float32)
            client.send_unroll(_random_unroll(learner, rng, reward=reward))
            i += 1

    thread = threading.Thread(target=actor, daemon=True)
    thread.start()
    try:
        record = run_learner(learner, 6, 120, "the client thread's unrolls")
    finally:
        stop.set()
        learner.close()
        client.close()
    assert learner.learner_step == 6 and learner.env_frames == 6 * 16
    assert learner.service.counters.rejected == 1
    assert "NaN" in next(iter(learner.service.counters.rejected_reasons))
    assert record["rejected_unrolls"] == 1 and np.isfinite(record["total_loss"])
    assert learner.learner.parameters.version == 6


def test_multi_task_metrics_give_each_level_its_mean_and_count(tmp_path):
    learner = _learner(tmp_path)
    client = LearnerClient(learner.address, backoff_seconds=0.05)
    rng = np.random.default_rng(1)
    # 4 unrolls (one batch): 3 episodes of level a (returns 1, 2, 6), 1 of level b (-4).
    episodes = [[[1.0, 9, "a"], [2.0, 9, "a"]], [[6.0, 9, "a"]], [[-4.0, 9, "b"]], []]
    for e in episodes:
        client.send_unroll(_random_unroll(learner, rng, episodes=e or [[0.5, 9, "c"]]))
    try:
        record = run_learner(learner, 1, 120, "the 4 unrolls sent")
    finally:
        learner.close()
        client.close()
    assert record["episodes"] == 5
    assert record["episode_return_mean"] == pytest.approx((1 + 2 + 6 - 4 + 0.5) / 5)
    assert record["episode_return_per_level"] == pytest.approx({"a": 3.0, "b": -4.0, "c": 0.5})
    assert record["episodes_per_level"] == {"a": 3, "b": 1, "c": 1}


def _synthetic_source(seed=0):
    agent = Agent(3, SPEC, torso="mlp", lstm_size=8)
    batch = synthetic_batch(agent, SPEC, RUN.unroll_length, RUN.batch_size, 0.2, seed)
    return lambda: ReadyBatch(batch, np.zeros(RUN.batch_size, np.int64)), batch


def test_mirrored_over_two_cpus_gives_the_same_update_as_default(tmp_path):
    source, _ = _synthetic_source()
    default = _learner(tmp_path / "default", batch_source=source)
    mirrored = _learner(tmp_path / "mirrored", batch_source=source,
                        strategy=make_strategy("mirrored", num_cpu_devices=2))
    assert mirrored.learner.strategy.num_replicas_in_sync == 2
    initial = default.agent.get_weights()
    mirrored.agent.set_weights(initial)
    stats_default = default.run(max_steps=2)
    stats_mirrored = mirrored.run(max_steps=2)
    for a, b in zip(default.agent.get_weights(), mirrored.agent.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert stats_mirrored["total_loss"] == pytest.approx(stats_default["total_loss"], rel=1e-4)
    assert stats_mirrored["grad_norm"] == pytest.approx(stats_default["grad_norm"], rel=1e-4)
    # The updates did something: the comparison is not between two no-ops.
    assert max(np.abs(a - b).max() for a, b in zip(initial, default.agent.get_weights())) > 1e-3


def test_a_seed_fixes_the_initial_weights_and_none_draws_afresh(tmp_path):
    source, _ = _synthetic_source()

    def initial(name, seed):
        return _learner(tmp_path / name, batch_source=source, seed=seed).agent.get_weights()

    first, again, other = initial("a", 7), initial("b", 7), initial("c", 8)
    unseeded = [initial("d", None), initial("e", None)]
    assert len(first) > 2 and all(w.size for w in first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    def differ(x, y):  # the kernels (biases start at zero whatever the seed)
        return any(not np.array_equal(a, b) for a, b in zip(x, y) if np.any(a))

    assert differ(first, other)
    assert differ(*unseeded) and differ(first, unseeded[0])


def test_checkpoint_resume_continues_steps_and_frames(tmp_path):
    source, _ = _synthetic_source()
    first = _learner(tmp_path, batch_source=source)
    assert first.learner.restored_from is None
    first.run(max_steps=3)
    weights = first.agent.get_weights()
    first.close()  # one learner per logdir
    second = _learner(tmp_path, batch_source=source)
    assert second.learner.restored_from is not None and second.learner.restored_from.endswith("ckpt-3")
    assert second.learner_step == 3 and second.env_frames == 3 * 16
    assert int(second.learner.train_step.optimizer.iterations.numpy()) == 3
    for a, b in zip(weights, second.agent.get_weights()):
        np.testing.assert_array_equal(a, b)
    second.run(max_steps=2)
    assert second.learner_step == 5 and second.env_frames == 5 * 16
    assert second.learner.parameters.version == 5


def _every_variable(learner):
    """[(name, value)] of everything a resume must bring back, in creation order: the
    agent's weights, the optimiser's variables (iterations and each weight's RMSProp slots)
    and PopArt's moments. (Names differ between two learners in one process: Keras numbers
    its layers.)"""
    step = learner.learner.train_step
    return ([(f"agent/{v.path}", v.numpy()) for v in learner.agent.variables]
            + [(f"optimizer/{v.path}", v.numpy()) for v in step.optimizer.variables]
            + [("popart/mu", step.popart.mu.numpy()), ("popart/nu", step.popart.nu.numpy())])


def test_a_resumed_learner_has_every_variable_and_continues_as_the_original(tmp_path):
    """Through the Learner, with RMSProp and PopArt: after a restart every weight, every
    optimiser slot and PopArt's moments are those saved, and the next update on the same
    batch gives what the original learner's next update gave, variable by variable."""
    with gin.unlock_config():
        gin.bind_parameter("TrainStep.popart", True)
        gin.bind_parameter("make_optimizer.kind", "rmsprop")
    source, _ = _synthetic_source()
    original = _learner(tmp_path / "run", batch_source=source)
    original.run(max_steps=3)  # ends with ckpt-3
    saved = _every_variable(original)
    slots = [name for name, _ in saved if name.endswith("_velocity")]
    assert len(slots) == len(original.agent.trainable_variables)  # RMSProp's, one per weight
    assert not np.allclose(saved[-1][1], 1.0)  # PopArt's second moment moved
    shutil.copytree(tmp_path / "run" / "checkpoints", tmp_path / "copy" / "checkpoints")
    original.run(max_steps=1)
    continued = _every_variable(original)
    original.close()
    resumed = _learner(tmp_path / "copy", batch_source=source)
    assert resumed.learner.restored_from.endswith("ckpt-3") and resumed.learner_step == 3
    restored = _every_variable(resumed)
    assert len(restored) == len(saved)
    for (name, value), (_, got) in zip(saved, restored):
        np.testing.assert_array_equal(got, value, err_msg=name)
    resumed.run(max_steps=1)
    after = _every_variable(resumed)
    resumed.close()
    for (name, value), (_, got) in zip(continued, after):
        np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_checkpoints_to_keep_none_keeps_every_checkpoint(tmp_path):
    source, _ = _synthetic_source()
    for keep, expected in ((None, 5), (2, 2)):
        logdir = tmp_path / str(keep)
        _learner(logdir, batch_source=source, checkpoint_every_minutes=0.0,
                 checkpoints_to_keep=keep).run(max_steps=5)
        kept = sorted(p.name for p in (logdir / "checkpoints").glob("ckpt-*.index"))
        assert len(kept) == expected and kept[-1] == "ckpt-5.index"


def test_the_run_stops_at_the_frame_budget(tmp_path):
    source, _ = _synthetic_source()
    run = RunConfig(unroll_length=4, batch_size=4, total_environment_frames=100,
                    num_action_repeats=1)
    learner = learner_process(SPEC, 3, str(tmp_path), run_config=run, batch_source=source,
                      log_every_seconds=0.0)
    learner.run()
    assert learner.env_frames == 112  # 7 updates of 16 frames: the first to pass 100


def test_max_frames_stops_at_the_first_batch_that_reaches_it(tmp_path):
    source, _ = _synthetic_source()
    learner = _learner(tmp_path, batch_source=source)
    learner.run(max_frames=50)  # 16 frames a batch
    assert learner.env_frames == 64
    learner.run(max_frames=96)
    assert learner.env_frames == 96
    learner.close()


def test_metrics_and_operative_config_are_written(tmp_path):
    source, _ = _synthetic_source()
    learner = _learner(tmp_path, batch_source=source)
    learner.run(max_steps=3)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines, "no metrics written"
    for key in ("env_frames", "learner_steps", "fps", "episodes", "episode_return_mean",
                "policy_lag_mean", "queue_fill", "rejected_unrolls", "learning_rate"):
        assert key in lines[-1], key
    assert lines[-1]["learner_steps"] == 3 and lines[-1]["episode_return_mean"] is None
    assert "Agent.torso = 'mlp'" in (tmp_path / "operative_config.gin").read_text()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_stop_ends_the_run_with_a_checkpoint(tmp_path):
    source, _ = _synthetic_source()
    learner = _learner(tmp_path, batch_source=source)
    timer = threading.Timer(1.0, learner.stop)
    timer.start()
    start = time.time()
    learner.run()
    assert time.time() - start < 30
    assert (tmp_path / "checkpoints" / "checkpoint").exists()


def test_the_learner_step_compiles_with_xla(tmp_path):
    """The TPU stand-in: the whole distributed step under jit_compile=True gives the same
    update as the graph step."""
    source, _ = _synthetic_source()
    graph = _learner(tmp_path / "graph", batch_source=source)
    xla = _learner(tmp_path / "xla", batch_source=source, jit_compile=True)
    xla.agent.set_weights(graph.agent.get_weights())
    graph.run(max_steps=2)
    xla.run(max_steps=2)
    for a, b in zip(graph.agent.get_weights(), xla.agent.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mirrored_over_two_cpus_compiles_each_replicas_gradients_with_xla(tmp_path):
    """XLA cannot compile a step whose variables sit on two devices: with jit_compile the
    mirrored learner compiles each replica's loss and gradients and gives the default
    strategy's graph update."""
    source, _ = _synthetic_source()
    default = _learner(tmp_path / "default", batch_source=source)
    xla = _learner(tmp_path / "xla", batch_source=source, jit_compile=True,
                   strategy=make_strategy("mirrored", num_cpu_devices=2))
    initial = default.agent.get_weights()
    xla.agent.set_weights(initial)
    stats_default = default.run(max_steps=2)
    stats_xla = xla.run(max_steps=2)
    assert xla.learner._local_gradients.experimental_get_tracing_count() >= 1  # the XLA path ran
    for a, b in zip(default.agent.get_weights(), xla.agent.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert stats_xla["grad_norm"] == pytest.approx(stats_default["grad_norm"], rel=1e-4)
    assert max(np.abs(a - b).max() for a, b in zip(initial, default.agent.get_weights())) > 1e-3


def test_train_steps_jit_compile_setting_acts_through_the_learner(tmp_path):
    """`TrainStep.jit_compile = True` alone (Learner.jit_compile left unset) compiles the
    learner's step, as `Learner.jit_compile = True` does; neither is ignored."""
    source, _ = _synthetic_source()
    plain = _learner(tmp_path / "b", batch_source=source,
                     strategy=make_strategy("mirrored", num_cpu_devices=2))
    assert plain.learner._local_gradients is None
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8",
                             "make_optimizer.learning_rate = 0.01", "TrainStep.jit_compile = True"])
    by_train_step = _learner(tmp_path / "a", batch_source=source,
                             strategy=make_strategy("mirrored", num_cpu_devices=2))
    assert by_train_step.learner._local_gradients is not None  # each replica's gradients under XLA


def test_policy_lag_counts_updates_since_the_acting_parameters(tmp_path):
    """Unrolls from version 0 trained at steps 0, 1, 2: lags 0, 1, 2."""
    source, _ = _synthetic_source()
    learner = _learner(tmp_path, batch_source=source, log_every_seconds=1000.0)
    record = learner.run(max_steps=3)
    assert record["policy_lag_mean"] == pytest.approx(1.0)


def test_nonfinite_updates_are_skipped_and_a_run_of_them_stops_training(tmp_path):
    """Mirrored over 2 logical CPUs: the skip decision is taken once for both replicas."""
    _, batch = _synthetic_source()
    poisoned = batch._replace(trajectory=batch.trajectory._replace(
        behaviour_logits=tf.fill(tf.shape(batch.trajectory.behaviour_logits), float("nan"))))
    sequence = iter([batch, poisoned, batch] + [poisoned] * 10)
    source = lambda: ReadyBatch(next(sequence), np.zeros(RUN.batch_size, np.int64))  # noqa: E731
    learner = _learner(tmp_path, batch_source=source, max_consecutive_nonfinite_updates=3,
                       strategy=make_strategy("mirrored", num_cpu_devices=2))
    with pytest.raises(NonFiniteUpdatesError, match="3 updates in a row"):
        learner.run(max_steps=20)
    assert learner.learner_step == 2 and learner.learner.nonfinite_updates == 4
    for weight in learner.agent.get_weights():
        assert np.all(np.isfinite(weight))
    assert learner.learner.parameters.version == 2  # nothing published for the skipped updates
    learner.close()
    restored = _learner(tmp_path, batch_source=source)  # the checkpoint taken on the way out
    assert restored.learner.restored_from and restored.learner_step == 2
    for a, b in zip(learner.agent.get_weights(), restored.agent.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_fresh_process_gets_a_mirrored_strategy_over_logical_cpus():
    """The training entry point builds the strategy in a process whose runtime has not
    started: make_strategy itself must split the CPU before it lists devices."""
    code = ("import impala_tf\nfrom impala_tf.distribute import make_strategy\n"
            "print('replicas', make_strategy('mirrored', num_cpu_devices=2).num_replicas_in_sync)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "replicas 2" in result.stdout


def _reference_updates(agent, batch, run, seed, batches):
    """What reuse should do, written out: `batches` times, num_epochs passes of num_minibatches
    slices in the order a `default_rng(seed)` draws, one TrainStep update each."""
    step = build_train_step(agent, run)
    rng = np.random.default_rng(seed)
    size = run.batch_size // run.num_minibatches
    for _ in range(batches):
        for _ in range(run.num_epochs):
            order = rng.permutation(run.batch_size)
            for k in range(run.num_minibatches):
                index = np.sort(order[k * size:(k + 1) * size])
                step(LearnerBatch(
                    tf.nest.map_structure(lambda x: tf.gather(x, index, axis=1),
                                          batch.trajectory),
                    tf.nest.map_structure(lambda x: tf.gather(x, index, axis=0),
                                          batch.initial_core_state)))
    return step


@pytest.mark.parametrize("strategy_kind", ["default", "mirrored"])
def test_sample_reuse_makes_epochs_times_minibatches_updates_a_batch(tmp_path, strategy_kind):
    """num_epochs=2, num_minibatches=2 with Adam: 4 updates per batch, on the slices a
    reference loop computes, frames counted once per batch, and the learning rate decayed by
    frames (the same at a given frame count as without reuse). Mirrored over 2 logical CPUs
    splits each slice over its replicas and gives the same weights."""
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8",
                             "make_optimizer.learning_rate = 0.01",
                             "make_optimizer.kind = 'adam'", "make_optimizer.epsilon = 1e-5"])
    run = RunConfig(unroll_length=4, batch_size=4, total_environment_frames=400,
                    num_action_repeats=1, num_epochs=2, num_minibatches=2)
    assert (run.frames_per_batch, run.updates_per_batch, run.frames_per_update) == (16, 4, 4.0)
    agent = Agent(3, SPEC, torso="mlp", lstm_size=8)
    batch = synthetic_batch(agent, SPEC, run.unroll_length, run.batch_size, 0.2, 5)
    strategy = (make_strategy("mirrored", num_cpu_devices=2) if strategy_kind == "mirrored"
                else None)
    learner = learner_process(SPEC, 3, str(tmp_path), run_config=run, strategy=strategy, seed=11,
                      log_every_seconds=0.0,
                      batch_source=lambda: ReadyBatch(batch, np.zeros(4, np.int64)))
    initial = learner.agent.get_weights()
    record = learner.run(max_steps=3)
    assert learner.learner_step == 12 and learner.env_frames == 48
    # 12 optimiser steps of 4 frames each: lr = 0.01 * (1 - 48 / 400) for the next one.
    assert float(learner.learner.train_step.current_learning_rate()) == pytest.approx(0.01 * (1 - 0.12))
    assert np.isfinite(record["total_loss"])
    reference_agent = build_agent(SPEC, 3)
    reference_agent.set_weights(initial)
    step = _reference_updates(reference_agent, batch, run, 11, batches=3)
    assert int(step.optimizer.iterations) == 12
    for a, b in zip(learner.agent.get_weights(), reference_agent.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(initial, learner.agent.get_weights())) > 1e-3
    learner.close()


def test_a_minibatch_count_that_does_not_divide_the_batch_is_named():
    with pytest.raises(ValueError, match="does not split into num_minibatches 3"):
        RunConfig(batch_size=32, num_minibatches=3)
