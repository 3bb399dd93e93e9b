"""endpoint: the learner process's side facing the actors, built from the run's shapes: its
limits derived from them, its figures for the metrics, refusals passed to the validator, a
real server on loopback that takes an actor's unroll into a batch, and nothing left behind
by a half-built one."""

import socket

import gin
import numpy as np
import pytest
import tensorflow as tf

from impala_tf import config
from impala_tf.learning.endpoint import ActorEndpoint
from impala_tf.networks import build_agent
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.run_config import RunConfig

SPEC = {"frame": tf.TensorSpec([10, 5, 1], tf.uint8)}
RUN = RunConfig(unroll_length=4, batch_size=4, total_environment_frames=1e6,
                num_action_repeats=1)


@pytest.fixture
def agent():
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8"])
    yield build_agent(SPEC, 3)
    gin.clear_config()


def _endpoint(agent, **kwargs):
    parameters = ParameterStore()
    parameters.publish(0, {"w": np.zeros(3, np.float32)})
    kwargs.setdefault("local_batch_size", RUN.batch_size)
    return ActorEndpoint(agent, SPEC, 3, RUN, tf.distribute.get_strategy(), parameters,
                         version=lambda: 0, **kwargs)


def _unroll_message(endpoint, actor_id):
    rng = np.random.default_rng(actor_id)
    fields = {}
    for name, (dtype, shape) in codec.spec_from_tensor_specs(endpoint.wire_spec).items():
        fields[name] = (rng.integers(0, 3, shape) if name in ("action", "observation/frame")
                        else np.zeros(shape) if name != "discount" else np.ones(shape))
        fields[name] = fields[name].astype(dtype)
    return codec.encode(codec.UNROLL_MAGIC, fields,
                        {"policy_version": 0, "actor_id": actor_id, "episodes": []})


def test_its_limits_follow_from_the_runs_shapes(agent):
    plain = _endpoint(agent, serve=False, num_actors=5, num_envs=3)
    assert plain.unrolls.maxsize == RUN.batch_size  # one batch
    assert plain.max_message_bytes == plain.validator.max_message_bytes
    assert (plain.validator.num_actors, plain.validator.num_envs) == (5, 3)
    assert plain.server is None and plain.batcher is None and plain.central is None
    central = _endpoint(agent, serve=False, central=True, num_envs=64)
    step = step_messages.step_message_limit({"frame": (np.uint8, (10, 5, 1))}, 64)
    assert central.max_message_bytes == max(central.validator.max_message_bytes, step)
    assert _endpoint(agent, serve=False, queue_capacity=7).unrolls.maxsize == 7


def test_it_serves_an_actors_unrolls_into_a_batch_and_reports_them(agent):
    endpoint = _endpoint(agent, num_actors=4)
    try:
        client = LearnerClient(endpoint.address)
        for actor_id in (0, 1, 2, 1):
            client.send_unroll(_unroll_message(endpoint, actor_id))
        ready = None
        for _ in range(60):
            ready = endpoint.next_batch()
            if ready is not None:
                break
        client.close()
        assert ready is not None and sorted(ready.actor_ids.tolist()) == [0, 1, 1, 2]
        assert ready.batch.trajectory.observation["frame"].shape == (5, 4, 10, 5, 1)
        assert endpoint.refuse([2]) == [2] and endpoint.refuse([2]) == []
        figures = endpoint.ingest_metrics()
        assert figures["accepted_unrolls"] == 4 and figures["refused_actors"] == [2]
        assert figures["accepted_unrolls_by_actor"] == {"0": 1, "1": 2, "2": 1}
        assert endpoint.pop_episodes().count == 0
        # 4 unrolls of 5 frames of 10x5 bytes brought 1000 bytes for 4 x 4 agent steps.
        assert figures["observation_bytes_per_frame"] == 1000 / 16
    finally:
        endpoint.close()
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", int(endpoint.address.rsplit(":", 1)[1])))


def test_a_workers_batch_that_does_not_split_into_minibatches_fails_at_start(agent):
    """B = 4 over two learner workers leaves each 2 unrolls, which 4 minibatches cannot
    split: one clear line when the endpoint is built (its server then stopped)."""
    run = RunConfig(unroll_length=4, batch_size=4, num_minibatches=4, num_action_repeats=1)
    parameters = ParameterStore()
    parameters.publish(0, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="batch of 2 unrolls does not split into"):
        ActorEndpoint(agent, SPEC, 3, run, tf.distribute.get_strategy(), parameters,
                      version=lambda: 0, local_batch_size=2)
