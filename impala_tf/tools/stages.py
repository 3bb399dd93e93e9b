"""The benchmark's in-process stages, each run alone in its own process by
`impala_tf.tools.benchmark` (its docstring says what each measures): `stage_NAME(seconds)`
returns that stage's figures as a JSON-ready dict."""

import tempfile
import threading
import time
from typing import Dict

from impala_tf.tools.meters import Meter


def _until(seconds: float, step) -> int:
    """Calls `step()` until `seconds` have passed; returns how many calls."""
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()
        calls += 1
    return calls


def stage_env(seconds: float) -> Dict:
    import numpy as np

    from impala_tf.acting.actor import configured_num_envs
    from impala_tf.envs.factory import make_environment
    num_envs = configured_num_envs()
    env = make_environment(num_envs, seed=0)
    n = env.action_spec().num_values
    rng = np.random.default_rng(0)
    env.reset()
    for _ in range(20):
        env.step(rng.integers(0, n, num_envs).astype(np.int32))
    with Meter() as m:
        steps = _until(seconds, lambda: env.step(rng.integers(0, n, num_envs).astype(np.int32)))
    frames = steps * num_envs * env.frames_per_step
    env.close()
    return {"num_envs": num_envs, "frames_per_s": frames / m.wall,
            "core_s_per_frame": m.cpu / frames, "cores_used": m.cpu / m.wall}


def _wire_bytes(message) -> int:
    """The bytes of an actor's encoded unroll as a stream sends it once it has started: a
    `StreamedUnroll`'s continued form (else whole), or the message itself."""
    if hasattr(message, "whole"):
        return len(message.continued or message.whole)
    return len(message)


def stage_forward(seconds: float) -> Dict:
    import tensorflow as tf

    from impala_tf.networks import build_agent
    from impala_tf.acting.actor import configure_actor_threads, configured_num_envs
    from impala_tf.envs.factory import make_environment
    from impala_tf.networks.agent import AgentInput
    from impala_tf.specs import num_tasks, tensor_specs
    configure_actor_threads()  # as in an actor process
    k = configured_num_envs()
    env = make_environment(k, seed=0)
    agent = build_agent(tensor_specs(env.observation_spec()),
                                 env.action_spec().num_values,
                                 num_tasks(env.observation_spec()))
    timestep, frames_per_step = env.reset(), env.frames_per_step
    env.close()
    inputs = AgentInput(
        prev_action=tf.zeros([k], tf.int32), reward=tf.constant(timestep.reward, tf.float32),
        episode_start=tf.constant(timestep.first()),
        observation={name: tf.constant(v) for name, v in timestep.observation.items()})
    state = agent.initial_state(k)
    per_frame = {}
    for name, jit in (("graph", False), ("xla", True)):
        step = tf.function(agent.step, jit_compile=jit)
        for _ in range(5):
            step(inputs, state)
        with Meter() as m:
            calls = _until(seconds / 2, lambda: step(inputs, state))
        per_frame[name] = m.cpu / (calls * k * frames_per_step)
    best = min(per_frame, key=per_frame.get)
    return {"num_envs": k, "core_s_per_frame": per_frame[best], "compiled": best,
            "graph_core_s_per_frame": per_frame["graph"],
            "xla_core_s_per_frame": per_frame["xla"]}


def stage_actor(seconds: float) -> Dict:
    from impala_tf.acting.actor import Actor, configure_actor_threads
    configure_actor_threads()  # as in an actor process
    actor = Actor("127.0.0.1:1", actor_index=0)  # no learner: parameters stay initial
    frames_per_step = actor.env.frames_per_step
    for _ in range(2):
        actor.act()
    sizes = []
    steps_before = actor.steps_taken
    with Meter() as m:
        _until(seconds, lambda: sizes.extend(_wire_bytes(x) for x in actor.act()))
    frames = (actor.steps_taken - steps_before) * frames_per_step
    actor.close(flush=False)
    return {"num_envs": actor.env.num_envs, "frames_per_s": frames / m.wall,
            "core_s_per_frame": m.cpu / frames, "cores_used": m.cpu / m.wall,
            "unroll_bytes": sum(sizes) / max(1, len(sizes))}


def stage_learner(seconds: float, strategy_kind: str) -> Dict:
    import numpy as np
    import tensorflow as tf

    from impala_tf.learning.batcher import ReadyBatch
    from impala_tf.distribute import make_strategy
    from impala_tf.envs.factory import make_environment
    from impala_tf.learning.learner import BatchFeed, Learner
    from impala_tf.networks import build_agent
    from impala_tf.run_config import RunConfig
    from impala_tf.specs import tensor_specs
    from impala_tf.synthetic import synthetic_batch
    strategy = make_strategy(strategy_kind)
    probe = make_environment(1)
    spec, num_actions = tensor_specs(probe.observation_spec()), probe.action_spec().num_values
    probe.close()
    run = RunConfig()
    template = build_agent(spec, num_actions)
    batch = synthetic_batch(template, spec, run.unroll_length, run.batch_size)
    ready = ReadyBatch(batch, np.zeros(run.batch_size, np.int64))
    with tempfile.TemporaryDirectory() as logdir:
        learner = Learner(spec, num_actions, logdir, strategy=strategy,
                          log_every_seconds=1e9, checkpoint_every_minutes=1e9)
        feed = BatchFeed(lambda: ready)
        # The real loop (`Learner.run`: step, bookkeeping, publication; one log and one
        # checkpoint at its end), for about `seconds`, timed after tracing.
        learner.run(feed, max_steps=2)
        started = time.perf_counter()
        learner.run(feed, max_steps=2)
        steps = max(2, int(seconds / ((time.perf_counter() - started) / 2)))
        with Meter() as m:
            learner.run(feed, max_steps=steps)
        learner.close()
    frames = steps * run.frames_per_batch
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return {"strategy": strategy_kind, "replicas": strategy.num_replicas_in_sync,
            "device": gpus[0] if gpus else "CPU",
            "batch_size": run.batch_size, "unroll_length": run.unroll_length,
            "seconds_per_update": m.wall / steps, "frames_per_s": frames / m.wall,
            "core_s_per_frame": m.cpu / frames, "cores_used": m.cpu / m.wall}


def stage_loop(seconds: float) -> Dict:
    from impala_tf.distribute import make_strategy
    from impala_tf.tools.loop_cost import loop_cost
    strategy = make_strategy()  # as configured: a TPU's under experiments/tpu_check.sh
    caller, thread = loop_cost(seconds, False, strategy), loop_cost(seconds, True, strategy)
    return {"caller": caller, "thread": thread,
            "loop_ratio": thread["loop_seconds_per_update"] / caller["loop_seconds_per_update"]}


def stage_vtrace(seconds: float) -> Dict:
    import numpy as np
    import tensorflow as tf

    from impala_tf import vtrace
    results = {}
    per_case = max(1.0, seconds / 6)
    for T in (20, 100):
        rng = np.random.default_rng(0)
        args = [tf.constant(rng.normal(size=(T, 32)).astype(np.float32) * 0.3),
                tf.constant(np.full((T, 32), 0.99, np.float32)),
                tf.constant(rng.normal(size=(T, 32)).astype(np.float32)),
                tf.constant(rng.normal(size=(T, 32)).astype(np.float32)),
                tf.constant(rng.normal(size=(32,)).astype(np.float32))]
        modes = {"eager": vtrace.from_importance_weights,
                 "tf.function": tf.function(vtrace.from_importance_weights),
                 "xla": tf.function(vtrace.from_importance_weights, jit_compile=True)}
        for mode, fn in modes.items():
            fn(*args).vs.numpy()
            calls = [0]

            def call():
                fn(*args).vs.numpy()
                calls[0] += 1

            with Meter() as m:
                _until(per_case, call)
            results[f"T={T} {mode}"] = 1e6 * m.wall / calls[0]
    return {"microseconds_per_call": results, "batch_size": 32}


def stage_transport(seconds: float) -> Dict:
    import queue as queue_lib

    from impala_tf.acting.actor import Actor
    from impala_tf.learning.process import learner_process
    from impala_tf.rpc import codec
    from impala_tf.rpc.client import LearnerClient
    from impala_tf.specs import tensor_specs
    actor = Actor("127.0.0.1:1", actor_index=0)
    # Whole messages: sent again and again, a continued unroll would not continue its stream.
    messages = [getattr(m, "whole", m) for m in actor.act()]
    spec = tensor_specs(actor.env.observation_spec())
    num_actions = actor.num_actions
    stacked = actor.env.stacked_observations
    actor.close(flush=False)
    size = sum(len(x) for x in messages) / len(messages)
    with tempfile.TemporaryDirectory() as logdir:
        process = learner_process(spec, num_actions, logdir, stacked_observations=stacked,
                                  endpoint_settings={"queue_capacity": 64})
        endpoint = process.endpoint
        endpoint.batcher.stop()  # this stage drains the queue itself
        validator = endpoint.validator
        # The codec alone: encode (from the decoded fields) and decode + validate.
        fields, meta = codec.decode(messages[0], codec.UNROLL_MAGIC)
        fields = {k: v.copy() for k, v in fields.items()}
        with Meter() as enc:
            n_enc = _until(seconds / 4, lambda: codec.encode(codec.UNROLL_MAGIC, fields, meta))
        with Meter() as dec:
            n_dec = _until(seconds / 4, lambda: validator(messages[0]))
        # gRPC on loopback, through the real client and service into the learner's queue.
        received = [0]
        stop = threading.Event()

        def drain():
            while not stop.is_set():
                try:
                    endpoint.unrolls.get(timeout=0.1)
                    received[0] += 1
                except queue_lib.Empty:
                    pass

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        client = LearnerClient(process.address, outbox_size=16)
        for message in messages:  # warm-up
            client.send_unroll(message)
        time.sleep(0.5)
        start_count = received[0]
        with Meter() as m:
            i = [0]

            def send():
                client.send_unroll(messages[i[0] % len(messages)])
                i[0] += 1

            _until(seconds / 2, send)
            count = received[0] - start_count
        stop.set()
        client.close(flush=False)
        process.close()
    return {"unroll_bytes": size,
            "encode_mb_per_s": n_enc * size / enc.wall / 1e6,
            "decode_validate_mb_per_s": n_dec * size / dec.wall / 1e6,
            "grpc_unrolls_per_s": count / m.wall, "grpc_mb_per_s": count * size / m.wall / 1e6,
            "grpc_core_s_per_unroll": m.cpu / max(count, 1)}
