"""No bug loses more than the current update: an exception anywhere in the learner's loop
leaves a checkpoint of its last update (or says why it could not), and a logging sink that
fails (a level name TensorBoard refuses, a broken terminal) is contained, counted and
reported once instead of ending the run."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.learning import checkpoints
from impala_tf.learning.batcher import ReadyBatch
from impala_tf.learning.process import learner_process
from impala_tf.learning.metrics import MetricsLog
from impala_tf.networks import Agent
from impala_tf.synthetic import synthetic_batch

from test_learner import RUN, SPEC, _small_agent  # noqa: F401 (the autouse fixture)


class Injected(Exception):
    """The bug the test plants."""


def _learner(logdir, **kwargs):
    agent = Agent(3, SPEC, torso="mlp", lstm_size=8)
    batch = synthetic_batch(agent, SPEC, RUN.unroll_length, RUN.batch_size, 0.2, 0)
    source = lambda: ReadyBatch(batch, np.zeros(RUN.batch_size, np.int64))  # noqa: E731
    return learner_process(SPEC, 3, str(logdir), run_config=RUN, batch_source=source,
                   log_every_seconds=0.0, checkpoint_every_minutes=60.0, **kwargs)


def _fail_on_call(learner, attribute, n, error=Injected):
    """Makes `learner.<attribute>` raise `error` on its n-th call."""
    original = getattr(learner, attribute)
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise error(f"planted in {attribute}")
        return original(*args, **kwargs)

    setattr(learner, attribute, wrapped)


def _target(learner, attribute):
    """The object whose `attribute` the loop calls: the feed's batches, the publisher (the
    loop hands it each update's parameters; its thread publishes them into the store), or
    the learner's own."""
    if attribute == "next_batch":
        return learner.feed
    if attribute == "publish":
        return learner.learner.publisher
    if attribute == "store.publish":
        return learner.learner.parameters
    return learner.learner


@pytest.mark.parametrize("attribute, error, raised_as", [
    ("next_batch", Injected, Injected),          # taking a batch (the feed's)
    ("_distributed_step", Injected, Injected),   # the update itself
    ("publish", Injected, Injected),             # handing parameters to the publisher
    ("store.publish", Injected, RuntimeError),   # publishing them, in the publisher's thread
    ("_trace_nonfinite", Injected, Injected),    # never called on finite updates: see below
    ("_log", Injected, Injected),                # the log line's own bookkeeping
    ("next_batch", KeyboardInterrupt, KeyboardInterrupt),
])
def test_an_exception_anywhere_in_the_loop_leaves_a_checkpoint_of_the_last_update(
        tmp_path, capfd, attribute, error, raised_as):
    learner = _learner(tmp_path)
    try:
        _fail_on_call(_target(learner, attribute), attribute.split(".")[-1], 4, error)
        if attribute == "_trace_nonfinite":  # make the 4th call happen: non-finite updates
            original = learner.learner._distributed_step

            def nonfinite(*args, **kwargs):
                stats = original(*args, **kwargs)
                stats["nonfinite_update"] = tf.constant(1.0)
                return stats

            learner.learner._distributed_step = nonfinite
        with pytest.raises(raised_as) as raised:
            learner.run(max_steps=100)
        if raised_as is not error:  # raised in the loop, caused by the thread's error
            assert isinstance(raised.value.__cause__, error)
        step = learner.learner_step
        weights = [np.array(w) for w in learner.agent.get_weights()]
    finally:
        learner.close()
    assert step >= (0 if attribute == "_trace_nonfinite" else 2)
    latest = checkpoints.latest_checkpoint(str(tmp_path))
    assert latest is not None and latest.endswith(f"ckpt-{step}")
    said = f"a final checkpoint went to {latest}"
    assert said in capfd.readouterr().err
    assert any(said in note for note in getattr(raised.value, "__notes__", []))
    resumed = _learner(tmp_path)  # the checkpoint holds the weights of the last update
    try:
        assert resumed.learner_step == step
        for mine, theirs in zip(weights, resumed.agent.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    finally:
        resumed.close()


def test_when_even_the_final_checkpoint_fails_the_run_names_the_last_whole_one(tmp_path,
                                                                              capfd):
    learner = _learner(tmp_path)
    try:
        learner.run(max_steps=2)  # ends with ckpt-2
        _fail_on_call(learner.learner, "_distributed_step", 2)
        _fail_on_call(learner.learner, "save", 1, OSError)
        with pytest.raises(Injected):
            learner.run(max_steps=100)
    finally:
        learner.close()
    err = capfd.readouterr().err
    assert "could not save a final checkpoint (OSError" in err
    assert f"the last whole checkpoint is {tmp_path}/checkpoints/ckpt-2" in err


def test_a_failing_sink_is_contained_counted_and_reported_once(tmp_path, caplog):
    learner = _learner(tmp_path)
    calls = []

    def broken_progress(record):
        calls.append(record)
        raise BrokenPipeError("the terminal went away")

    try:
        with caplog.at_level(logging.WARNING):
            learner.run(max_steps=5, progress=broken_progress)
    finally:
        learner.close()
    assert learner.learner_step == 5 and len(calls) >= 5
    reports = [r for r in caplog.records if "progress sink failed" in r.getMessage()]
    assert len(reports) == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["logging_errors"] >= 4


def test_a_summary_tensorboard_refuses_loses_only_itself(tmp_path):
    """A lone surrogate in a level name made `tf.summary.scalar` raise at the next log line
    and killed the learner with no final checkpoint. The validator now refuses such names
    (test_hostile_input); should another bad name get through, only its scalar is lost."""
    log = MetricsLog(str(tmp_path))
    record = {"env_frames": 10, "fps": 5.0,
              "episode_return_per_level": {"x\ud800": 1.0, "pong": 2.0}}
    log.write(record)
    assert log.summary_errors.count == 1
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["episode_return_per_level"]["pong"] == 2.0
