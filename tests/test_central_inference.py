"""Central inference: environment actors that import no TensorFlow send steps over a real
gRPC stream, the learner acts for them and assembles unrolls equal, step for step, to those
an actor that acts itself builds (Catch and real Pong, LSTM core, episode ends inside
unrolls, two actors batched into one call); malformed steps are rejected and counted; Catch
learns with actor processes in central mode."""

import json
import os
import queue
import re
import subprocess
import sys
import threading

import gin
import grpc
import numpy as np
import pytest
import tensorflow as tf

from impala_tf import config, gin_utils
from impala_tf.distribute import make_strategy
from impala_tf.networks import build_agent
from impala_tf.acting.actor import Actor
from impala_tf.learning.central_inference import CentralInference
from impala_tf.acting.env_actor import EnvActor
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.unroll_queue import UnrollQueue
from impala_tf.rpc.protocol import ACT
from impala_tf.rpc.validation import UnrollValidator
from impala_tf.frames import PackedStack
from impala_tf.specs import num_tasks, tensor_specs

T = 20


# -- the learner's side over a real stream ----------------------------------------------------

def _serve(agent, env_spec, stacked, num_actions, num_envs, num_actors=2, greedy=True,
           max_wait_ms=1000.0, **central_kwargs):
    """A real server on loopback whose service acts centrally with `agent`."""
    unrolls = UnrollQueue()
    counters_service = LearnerService(
        UnrollValidator({}, num_actions, 1 << 20, num_actors=num_actors), unrolls,
        ParameterStore(), threading.Event())
    central = CentralInference(
        agent, unrolls, counters_service.counters,
        {name: (spec.dtype.as_numpy_dtype, tuple(spec.shape)) for name, spec in env_spec.items()},
        num_actions, num_envs, T, num_actors, is_refused=lambda a: False, version=lambda: 7,
        env_seed=int(gin_utils.configured_value(Actor, "seed")), stacked_observations=stacked,
        greedy=greedy, max_wait_ms=max_wait_ms, **central_kwargs)
    counters_service.central = central
    server = LearnerServer(counters_service, "127.0.0.1:0", 8 << 20).start()
    central.start()
    return server, counters_service, central


def _unrolls_both_ways(gin_file, bindings, rounds, strategy=None, jit_compile=False):
    """Each of two actors' unrolls built by actors that act themselves (greedy) and by
    central inference with the same weights, two environment actors batched together;
    central inference's agent built under `strategy` (None: the default)."""
    config.parse_config([gin_file], bindings)
    try:
        # Started at the service's step 7: both modes mix it into the seeds alike.
        actors = [Actor("127.0.0.1:9", actor_index=i, learner_step=7)  # never dialled
                  for i in range(2)]
        for actor in actors[1:]:
            for mine, theirs in zip(actor.agent.variables, actors[0].agent.variables):
                mine.assign(theirs)
        expected = []
        for actor in actors:
            actor.pack_stacked_frames = False
            actor.policy = BatchedPolicy(actor.agent, greedy=True)
            expected.append([codec.decode(m, codec.UNROLL_MAGIC)[0]
                             for _ in range(rounds) for m in actor.act()])
        env = actors[0].env
        spec, num_actions = tensor_specs(env.observation_spec()), env.action_spec().num_values
        with (strategy or tf.distribute.get_strategy()).scope():
            agent = build_agent(spec, num_actions, num_tasks(env.observation_spec()))
        for mine, theirs in zip(agent.variables, actors[0].agent.variables):
            mine.assign(theirs)
        server, service, central = _serve(agent, spec, env.stacked_observations, num_actions,
                                          env.num_envs, strategy=strategy,
                                          jit_compile=jit_compile)
        env_actors = [EnvActor(server.address, actor_index=i) for i in range(2)]
        try:
            threads = [threading.Thread(target=a.run, kwargs=dict(max_steps=rounds * T + 1))
                       for a in env_actors]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            got = [[], []]
            while not service.unrolls.empty():
                unroll = service.unrolls.get_nowait()
                got[unroll.actor_id].append(unroll)
        finally:
            for a in env_actors:
                a.close()
            central.stop()
            server.stop(0)
        for actor in actors:
            actor.close(flush=False)
    finally:
        gin.clear_config()
    return expected, got, central, service


def _assert_equal_unrolls(expected, got):
    assert [len(g) for g in got] == [len(e) for e in expected]
    for mine, theirs in zip(expected, got):
        for fields, unroll in zip(mine, theirs):
            assert unroll.policy_version == 7
            assert list(unroll.flat()) == list(fields)
            for name, value in fields.items():
                if np.asarray(value).dtype.kind == "f":
                    np.testing.assert_allclose(unroll.flat()[name], value, rtol=1e-5,
                                               atol=1e-6, err_msg=name)
                else:
                    np.testing.assert_array_equal(unroll.flat()[name], value, err_msg=name)


def test_central_unrolls_equal_the_actors_own_on_catch_with_an_lstm():
    rounds = 3
    expected, got, central, service = _unrolls_both_ways("catch.gin", [
        f"RunConfig.unroll_length = {T}", "Agent.use_lstm = True", "Agent.lstm_size = 8",
        "Actor.num_envs = 4"], rounds)
    _assert_equal_unrolls(expected, got)
    starts = sum(int(f["episode_start"][1:].sum()) for f in expected[0])
    assert starts >= 4  # Catch's 9-step episodes end inside every unroll
    assert np.abs(got[0][-1].flat()["core_state/h"]).max() > 0  # the LSTM carried state
    # The two actors shared inference calls: far fewer calls than steps of both.
    assert central.calls <= (rounds * T + 1) + 4
    assert service.counters.accepted == 2 * rounds * 4
    assert service.counters.pop_episodes().count > 0


def test_central_inference_on_a_slices_first_core_gives_the_actors_own_unrolls():
    """The TPU stand-in: the learner's agent mirrored over two logical CPUs, the step
    XLA-compiled on the first of them, core states in its device table: the unrolls are
    still the actors' own."""
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    rounds = 2
    expected, got, central, _ = _unrolls_both_ways("catch.gin", [
        f"RunConfig.unroll_length = {T}", "Agent.use_lstm = True", "Agent.lstm_size = 8",
        "Actor.num_envs = 4"], rounds, strategy=strategy, jit_compile=True)
    _assert_equal_unrolls(expected, got)
    assert central.step.jit_compile and central.step.device.endswith("CPU:0")
    assert central.step._step.experimental_get_tracing_count() >= 1
    # The table holds each actor's rows: 2 actors x 4 environments, and the padding's.
    assert central.step.table.h.shape == (2 * 4 + 1, 8)
    assert np.abs(got[1][-1].flat()["core_state/h"]).max() > 0


def test_central_unrolls_equal_the_actors_own_on_real_pong():
    """Pong's 4-frame stacks travel each frame once and are rebuilt exactly, across resets
    (episodes capped at 100 agent steps) inside unrolls."""
    rounds = 6
    expected, got, _, _ = _unrolls_both_ways("atari/pong_shallow.gin", [
        f"RunConfig.unroll_length = {T}", "Agent.lstm_size = 8", "Actor.num_envs = 2",
        "AtariBatchedEnv.max_episode_frames = 400"], rounds)
    _assert_equal_unrolls(expected, got)
    assert sum(int(f["episode_start"][1:].sum()) for f in expected[0]) >= 2
    # The unrolls handed to the batcher carry each frame once, as an actor's do.
    packed = [u.trajectory.observation["frame"] for g in got for u in g]
    assert all(isinstance(p, PackedStack) for p in packed)
    assert sum(p.nbytes for p in packed) < 0.4 * sum(np.asarray(p).nbytes for p in packed)


def _act_within(actor, steps, what, seconds=120):
    """`actor.run(max_steps=steps)`, stopped after `seconds` with a failure naming `what`."""
    from deadlines import stopping_at
    stop = threading.Event()
    with stopping_at(seconds, stop.set, f"{steps} steps of {what}"):
        actor.run(stop, max_steps=steps)


def _catch_server(**serve_kwargs):
    config.parse_config(["catch.gin"], [f"RunConfig.unroll_length = {T}",
                                        "Actor.num_envs = 2"])
    try:
        actor = Actor("127.0.0.1:9")
        env = actor.env
        spec = tensor_specs(env.observation_spec())
        serve_kwargs.setdefault("max_wait_ms", 1.0)
        server, service, central = _serve(actor.agent, spec, {}, env.action_spec().num_values,
                                          2, greedy=False, **serve_kwargs)
        yield server, service, central
        central.stop()
        server.stop(0)
        actor.close(flush=False)
    finally:
        gin.clear_config()


@pytest.fixture
def catch_server():
    for server, service, _ in _catch_server():
        yield server, service


def test_a_silent_session_delays_batches_once_and_a_new_hello_replaces_it():
    """A token holder said hello for actor 0 and never stepped: each batch of the honest
    actor 1 waited max_wait_ms for it (4,100 -> 1,000 frames/s in the attack), and actor 0
    itself could not act (ALREADY_EXISTS for as long as the squatter stayed)."""
    for server, service, central in _catch_server(max_wait_ms=300.0,
                                                  replace_silent_after_seconds=0.5):
        channel = grpc.insecure_channel(server.address)
        hello = queue.Queue()
        hello.put(step_messages.encode_hello(0))
        squatter = channel.stream_stream(ACT)(iter(hello.get, None), timeout=60)
        assert step_messages.decode_settings(next(squatter))["num_envs"] == 2
        honest = EnvActor(server.address, actor_index=1)
        try:
            _act_within(honest, 2 * T + 1, "actor 1's steps past the squatter")
        finally:
            honest.close()
        assert service.counters.accepted_by_actor[1] == 2 * 2  # 2 environments, 2 unrolls
        assert central.waited_out == 1  # the squatter was late once, then not waited for
        restarted = EnvActor(server.address, actor_index=0)  # the real actor 0 comes back
        try:
            _act_within(restarted, T + 1, "the returning actor 0's steps")
        finally:
            restarted.close()
        assert central.replaced == 1 and service.counters.accepted_by_actor[0] == 2
        with pytest.raises(grpc.RpcError) as error:
            next(squatter)
        assert error.value.code() == grpc.StatusCode.ABORTED
        assert "replaced this silent session" in error.value.details()
        channel.close()


def _act_stream(address, messages):
    channel = grpc.insecure_channel(address)
    try:
        return list(channel.stream_stream(ACT)(iter(messages), timeout=30))
    finally:
        channel.close()


def test_a_malformed_step_ends_its_stream_and_is_counted_and_others_go_on(catch_server):
    server, service = catch_server
    with pytest.raises(grpc.RpcError) as error:
        _act_stream(server.address, [step_messages.encode_hello(0), b"garbage"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        _act_stream(server.address, [step_messages.encode_hello(5)])  # 2 actors: ids 0, 1
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "actor_id" in error.value.details()
    assert service.counters.rejected == 2
    actor = EnvActor(server.address, actor_index=0)
    try:
        _act_within(actor, 2 * T + 1, "the same id acting again")  # once its stream is gone
    finally:
        actor.close()
    assert service.counters.accepted == 2 * 2


def test_an_actor_id_acts_on_one_stream_at_a_time(catch_server):
    server, _ = catch_server
    channel = grpc.insecure_channel(server.address)
    first = queue.Queue()
    first.put(step_messages.encode_hello(1))
    responses = channel.stream_stream(ACT)(iter(first.get, None), timeout=30)
    try:
        assert step_messages.decode_settings(next(responses))["num_envs"] == 2
        with pytest.raises(grpc.RpcError) as error:
            _act_stream(server.address, [step_messages.encode_hello(1)])
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        responses.cancel()
        channel.close()


def test_a_learner_whose_actors_act_themselves_refuses_act():
    service = LearnerService(UnrollValidator({}, 3, 1 << 20), queue.Queue(), ParameterStore(),
                             threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", 1 << 20).start()
    try:
        with pytest.raises(grpc.RpcError) as error:
            _act_stream(server.address, [step_messages.encode_hello(0)])
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop(0)


def test_an_environment_actor_imports_no_tensorflow():
    """The module, the config and the environments of an env actor process: `-X importtime`
    lists every module it imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "impala_tf.acting.process",
         "--inference=central", "--learner_address=127.0.0.1:9",
         "--gin_file=atari/pong_shallow.gin", "--max_steps=0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "impala_tf.envs.atari" in imported and "grpc" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def test_catch_learns_with_environment_actor_processes(tmp_path):
    """`python -m impala_tf.train` in central mode: two actor processes that hold no
    TensorFlow (none mapped, well under 250 MB resident) and Catch reaches near-optimal
    return."""
    logdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin",
               f"--logdir={logdir}", "--gin_bindings=Learner.log_every_seconds = 2",
               "--gin_bindings=Launcher.inference = 'central'",
               "--gin_bindings=Launcher.num_actors = 2",
               "--gin_bindings=RunConfig.total_environment_frames = 300000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    seen = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("frames") and not seen:
            for pid in _children(process.pid):
                with open(f"/proc/{pid}/maps") as f:
                    maps = f.read()
                with open(f"/proc/{pid}/status") as f:
                    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
                seen[pid] = ("tensorflow" in maps, rss_kb / 1024)
    process.wait(600)
    out = "".join(lines)
    assert process.returncode == 0, out[-4000:]
    assert len(seen) == 2 and all(not tf and rss < 250 for tf, rss in seen.values()), seen
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    returns = [r["episode_return_mean"] for r in records if r["episode_return_mean"] is not None]
    tail = returns[-max(1, len(returns) // 5):]
    assert np.mean(tail) >= 0.9, returns
    assert records[-1]["rejected_unrolls"] == 0


def test_an_environment_actor_waits_out_a_learner_restart_on_the_same_port(tmp_path):
    """Central mode: the learner goes away and a new one takes its port (as a restarted
    `--role=learner` does): the environment actor keeps its environments, opens a new
    stream when the port answers again, and the new learner builds its unrolls."""
    from deadlines import wait_for
    from impala_tf.envs.factory import make_environment
    from impala_tf.learning.process import learner_process
    config.parse_config(["catch.gin"], ["RunConfig.unroll_length = 4", "Actor.num_envs = 2",
                                        "EnvActor.reconnect_backoff_seconds = 0.1",
                                        "EnvActor.max_reconnect_backoff_seconds = 0.5"])
    specs = tensor_specs(make_environment(1).observation_spec())
    stop = threading.Event()
    second = None
    try:  # the first learner binds a port of its own; the second takes the same one
        first = learner_process(specs, 3, str(tmp_path / "a"), central=True, num_actors=1,
                                num_envs=2)
        first.endpoint.batcher.stop()
        address = first.address
        actor = EnvActor(address, actor_index=0)
        thread = threading.Thread(target=actor.run, args=(stop,), daemon=True)
        thread.start()
        for _ in range(2):
            assert first.endpoint.unrolls.get(timeout=60).actor_id == 0
        env, streams = actor.env, actor.streams
        first.close()
        second = learner_process(specs, 3, str(tmp_path / "b"), server_address=address,
                                 central=True, num_actors=1, num_envs=2)
        second.endpoint.batcher.stop()
        unroll = second.endpoint.unrolls.get(timeout=60)
        assert unroll.actor_id == 0 and unroll.trajectory.action.shape == (5,)
        wait_for(lambda: actor.streams > streams, 30, "the actor's count of its new stream")
        assert thread.is_alive() and actor.env is env  # the same environments go on
    finally:
        stop.set()
        thread.join(30)
        if second is not None:
            second.close()
        gin.clear_config()
    assert not thread.is_alive()
