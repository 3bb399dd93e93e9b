"""Throughput benchmark: each stage of the data path alone, the whole system, and the bound.

    python -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin [--seconds 20]
        [--json FILE] [--stages env,actor,learner,vtrace,transport,end_to_end] [--scaling]

Every stage runs in its own process, with the thread settings it has in training, for
`--seconds` after a warm-up, and reports frames/s (a frame is an emulator frame: 4 per agent
step with action repeat 4) and the CPU it used (core-seconds per frame, from getrusage):

  env         the K environments of one actor, random actions (Atari: also with ALE's
              vector interface at 1 and 2 threads; the cheapest counts);
  forward     the agent's step alone at the actors' batch K: the raw forward pass (inputs
              already tensors, nothing sampled or converted; graph and XLA, the cheaper);
  actor       one actor's loop (environments, batched inference, unroll encoding), no learner;
  learner     the learner's update loop on synthetic batches, per strategy (default; mirrored
              over 2 logical CPU devices);
  vtrace      `from_importance_weights` alone, T=20 and T=100, B=32, eager / tf.function / XLA
              (microseconds per call);
  transport   the codec alone, then unrolls through the gRPC service on loopback (unrolls/s,
              MB/s; sender and receiver share this one process);
  end_to_end  `python -m impala_tf.train` with its actor processes, once per inference
              mode (`--inference`: actor, central) (frames/s over the measured window,
              policy lag, queue fill, CPU cores used and memory held by each process);
  ingest      (only with --stages=ingest) --ingest_actors light actor streams into one
              learner whose step does nothing: actors served, frames/s, the learner's CPU
              and the wire's bytes per frame (`impala_tf/tools/ingest.py`);
  loop        (only with --stages=loop) the learner loop's own cost per update at B=32,
              T=20 (everything but the update: `impala_tf/tools/loop_cost.py`), publishing
              parameters from the loop and from the publisher thread, in one process.

The bound is the frames/s this machine could reach if its cores did nothing but step the
environments, run the actors' inference and learn, each at its cost per frame in our
stages: cores / (env + inference + learning core-seconds per frame), inference being the
actor stage less the env stage. The physical limit puts the raw work in its place: the
environments at their best ALE thread count, the raw forward pass and the learner's step,
cores / (env + forward + learning). End-to-end is reported as a fraction of both, with each
actor process's resident memory. `--scaling` adds end-to-end runs with 1, 2, 4 and 8 actor
processes (`--scaling_actors`), with the learner on 1 and on 2 (mirrored) logical devices
(`--scaling_devices`). Nothing is asserted:
the figures are this machine's, today.
"""

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from absl import app, flags

from impala_tf import command_line, gin_utils, quiet
from impala_tf.tools.meters import Meter, cores

FLAGS = flags.FLAGS
DEFAULT_STAGES = ("env", "forward", "actor", "learner", "vtrace", "transport", "end_to_end")
ALE_THREADS = (1, 2)  # besides ALE's default, for the env stage on Atari
STAGES = DEFAULT_STAGES + ("ingest", "loop")  # on request (--stages=ingest,loop)


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", ["atari/pong_shallow.gin"], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_float("seconds", 20.0, "Measured time per stage (after its warm-up).")
    flags.DEFINE_string("stages", ",".join(DEFAULT_STAGES), "Comma-separated stages to run "
                        f"(of {', '.join(STAGES)}).")
    flags.DEFINE_integer("ingest_actors", 16, "ingest: actor streams into one learner.")
    flags.DEFINE_bool("ingest_packed", True, "ingest: send stacked frames packed, each "
                      "frame once (--noingest_packed: whole stacks, the earlier wire format).")
    flags.DEFINE_bool("gpu", False, "Let the learner use the GPUs (the learner and "
                      "end_to_end stages); actors and the other stages never do.")
    flags.DEFINE_bool("scaling", False, "Also end-to-end with --scaling_actors actor "
                      "processes x --scaling_devices learner devices.")
    flags.DEFINE_list("scaling_actors", ["1", "2", "4", "8"], "--scaling: actor processes.")
    flags.DEFINE_list("scaling_devices", ["1", "2"], "--scaling: the learner's logical "
                      "devices (2: mirrored over 2 logical CPU devices).")
    flags.DEFINE_list("inference", ["actor", "central"], "end_to_end: the inference modes "
                      "to run (Launcher.inference); --scaling uses the first.")
    flags.DEFINE_string("json", None, "Write all figures to this file.")
    # Internal: run one stage in this process and write its figures to --stage_out.
    flags.DEFINE_string("stage", None, "(internal) the stage this process runs.")
    flags.DEFINE_string("stage_out", None, "(internal) where that stage writes its JSON.")
    flags.DEFINE_string("strategy", "default", "(internal) learner stage: default|mirrored.")
    flags.DEFINE_integer("num_actors", None, "(internal) end_to_end: actor processes.")


def _until(seconds: float, step) -> int:
    """Calls `step()` until `seconds` have passed; returns how many calls."""
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()
        calls += 1
    return calls


# -- stages, each run in its own process ----------------------------------------------------
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
               inference: str = "actor") -> Dict:
    """Trains with `python -m impala_tf.train` (`inference`: `Launcher.inference`) and
    measures a window of `seconds` after the learner has logged `warmup_records` records
    with progress."""
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
                                   env=_child_environ(gpu=FLAGS.gpu))
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


def _child_environ(gpu: bool) -> Dict[str, str]:
    """A child process's environment: quiet TensorFlow, and no GPU unless `gpu`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# -- the parent: runs each stage in a child process and prints the table ------------------
def _run_stage(stage: str, extra=()) -> Dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, "-m", "impala_tf.tools.benchmark", f"--stage={stage}",
               f"--stage_out={out}", f"--seconds={FLAGS.seconds}", *extra]
    command += [f"--gin_file={g}" for g in FLAGS.gin_file]
    command += [f"--gin_bindings={b}" for b in FLAGS.gin_bindings]
    env = _child_environ(gpu=FLAGS.gpu and stage == "learner")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        if result.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{result.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def physical_limit(envs: Dict, forward: Dict, learner: Dict, num_cores: int) -> Dict:
    """Frames/s if the cores did only the raw work: the environments at their cheapest ALE
    thread count (`envs`: threads -> env stage), the raw forward pass and the learning."""
    threads, env = min(envs.items(), key=lambda item: item[1]["core_s_per_frame"])
    per_frame = (env["core_s_per_frame"] + forward["core_s_per_frame"]
                 + learner["core_s_per_frame"])
    return {"cores": num_cores, "ale_threads": threads,
            "env_core_s_per_frame": env["core_s_per_frame"],
            "forward_core_s_per_frame": forward["core_s_per_frame"],
            "learning_core_s_per_frame": learner["core_s_per_frame"],
            "frames_per_s": num_cores / per_frame}


def bound(env: Dict, actor: Dict, learner: Dict, num_cores: int) -> Dict:
    """Frames/s if the cores did only env stepping, inference and learning."""
    inference = max(0.0, actor["core_s_per_frame"] - env["core_s_per_frame"])
    per_frame = env["core_s_per_frame"] + inference + learner["core_s_per_frame"]
    return {"cores": num_cores, "env_core_s_per_frame": env["core_s_per_frame"],
            "inference_core_s_per_frame": inference,
            "learning_core_s_per_frame": learner["core_s_per_frame"],
            "frames_per_s": num_cores / per_frame}


def _fmt(x, spec=",.0f"):
    return "n/a" if x is None else format(x, spec)


def print_table(results: Dict) -> None:
    print(f"\n# impala_tf benchmark, {results['date']}, {results['machine']}")
    print(f"# {results['command']}\n")
    print(f"{'stage':34s} {'frames/s':>10s} {'core-us/frame':>14s} {'cores used':>11s}  notes")

    def row(name, r, notes=""):
        print(f"{name:34s} {_fmt(r.get('frames_per_s')):>10s} "
              f"{_fmt(1e6 * r['core_s_per_frame'] if 'core_s_per_frame' in r else None, '.1f'):>14s} "
              f"{_fmt(r.get('cores_used'), '.2f'):>11s}  {notes}")

    s = results["stages"]
    if "env" in s:
        row(f"env ({s['env']['num_envs']} envs, random actions)", s["env"])
        for threads, r in s.get("env_by_ale_threads", {}).items():
            if threads != "default":
                row(f"env, ALE at {threads} thread{'s' * (threads != '1')}", r)
    if "forward" in s:
        f = s["forward"]
        row(f"forward pass alone (batch {f['num_envs']})", f,
            f"graph {1e6 * f['graph_core_s_per_frame']:.1f}, XLA "
            f"{1e6 * f['xla_core_s_per_frame']:.1f} us/frame")
    if "actor" in s:
        row("actor (envs + inference + encode)", s["actor"],
            f"{s['actor']['unroll_bytes'] / 1e3:,.0f} kB per unroll")
    for r in s.get("learner", []):
        row(f"learner, {r['strategy']} ({r['replicas']} replica{'s' * (r['replicas'] > 1)})", r,
            f"T={r['unroll_length']} B={r['batch_size']}: {r['seconds_per_update']:.3f} s/update")
    if "vtrace" in s:
        print("\nV-trace alone, B=32 (us per call): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in s["vtrace"]["microseconds_per_call"].items()))
    if "transport" in s:
        t = s["transport"]
        print(f"transport ({t['unroll_bytes'] / 1e3:,.0f} kB unrolls): encode "
              f"{t['encode_mb_per_s']:,.0f} MB/s, decode+validate "
              f"{t['decode_validate_mb_per_s']:,.0f} MB/s, gRPC loopback "
              f"{t['grpc_unrolls_per_s']:,.0f} unrolls/s = {t['grpc_mb_per_s']:,.0f} MB/s")
    if "ingest" in s:
        i = s["ingest"]
        print(f"ingest: {i['actors_served']} of {i['actors']} actor streams served, "
              f"{i['frames_per_s']:,.0f} frames/s, learner "
              f"{_fmt(i['learner_cpu_us_per_frame'], '.1f')} us CPU per frame, "
              f"{i['wire_bytes_per_frame']:,.0f} wire bytes per frame, "
              f"{i['rejected_unrolls']} rejected "
              f"(at most {i['max_concurrent_rpcs']} calls at once)")
    if "bound" in results:
        b = results["bound"]
        print(f"\nbound on {b['cores']} cores: {b['frames_per_s']:,.0f} frames/s "
              f"(per frame: env {1e6 * b['env_core_s_per_frame']:.1f} us, inference "
              f"{1e6 * b['inference_core_s_per_frame']:.1f} us, learning "
              f"{1e6 * b['learning_core_s_per_frame']:.1f} us of CPU)")
    if "physical_limit" in results:
        p = results["physical_limit"]
        print(f"physical limit on {p['cores']} cores: {p['frames_per_s']:,.0f} frames/s (per "
              f"frame: env {1e6 * p['env_core_s_per_frame']:.1f} us with ALE's "
              f"{p['ale_threads']} threads, forward {1e6 * p['forward_core_s_per_frame']:.1f}"
              f" us, learning {1e6 * p['learning_core_s_per_frame']:.1f} us of CPU)")
    if "loop" in s:
        for r in (s["loop"]["caller"], s["loop"]["thread"]):
            print(f"learner loop, publishing from the {r['publish']}: "
                  f"{1e3 * r['loop_seconds_per_update']:.2f} ms per update besides the update's "
                  f"{1e3 * r['update_seconds_per_update']:.1f} ms ({r['updates']} updates; "
                  f"publication lag {_fmt(r['publish_lag_mean'], '.2f')} updates, "
                  f"{r['superseded']} snapshots superseded)")
        print(f"learner loop: the thread's cost is {s['loop']['loop_ratio']:.2f}x the caller's")
    for r in s.get("end_to_end", []):
        mode = f"{r.get('inference', 'actor')} inference"
        if "error" in r:
            print(f"end-to-end ({mode}), {r['num_actors']} actors, learner on "
                  f"{r['learner_devices']} device(s): failed ({r['error'][-200:]})")
            continue
        ratio = ", ".join(
            f"{r['frames_per_s'] / results[key]['frames_per_s']:.0%} of the {name}"
            for key, name in (("bound", "bound"), ("physical_limit", "physical limit"))
            if key in results)
        memory = [m for m in r.get("actor_rss_mb", []) if m is not None]
        if memory:
            ratio += f"; actors resident {', '.join(f'{m:,.0f}' for m in memory)} MB"
        print(f"end-to-end ({mode}), {r['num_actors']} actors, learner on "
              f"{r['learner_devices']} device(s): {r['frames_per_s']:,.0f} frames/s {ratio}; lag "
              f"{_fmt(r['policy_lag_mean'], '.1f')}, queue fill {r['queue_fill_mean']:.2f}, "
              f"cores: learner {_fmt(r['learner_cores_used'], '.2f')}, actors "
              f"{', '.join(_fmt(a, '.2f') for a in r['actor_cores_used'])} "
              f"(total {r['total_cores_used']:.2f}); observation bytes per frame "
              f"{_fmt(r.get('observation_bytes_per_frame'))}")


def _is_atari() -> bool:
    """Whether the parsed config's environments are single-game Atari (ALE's threads)."""
    from impala_tf.envs.factory import make_environment
    return gin_utils.configured_value(make_environment, "kind") == "atari"


def run_all() -> Dict:
    stages = [s for s in FLAGS.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise app.UsageError(f"Unknown stages {unknown}; expected some of {list(STAGES)}.")
    results = {"date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": f"{platform.node()}, {cores()} cores, {platform.machine()}",
               "command": " ".join(["python -m impala_tf.tools.benchmark"] + sys.argv[1:]),
               "seconds": FLAGS.seconds, "stages": {}}
    s = results["stages"]
    for stage in stages:
        print(f"running {stage} ...", flush=True)
        if stage == "learner":
            s["learner"] = [_run_stage("learner", [f"--strategy={k}"])
                            for k in ("default", "mirrored")]
        elif stage == "end_to_end":
            s["end_to_end"] = [end_to_end(FLAGS.seconds, FLAGS.gin_file, FLAGS.gin_bindings,
                                          inference=mode) for mode in FLAGS.inference]
        elif stage == "env":
            s["env"] = _run_stage("env")
            if _is_atari():
                s["env_by_ale_threads"] = {"default": s["env"]}
                for threads in ALE_THREADS:
                    s["env_by_ale_threads"][str(threads)] = _run_stage(
                        "env", [f"--gin_bindings=AtariBatchedEnv.num_threads = {threads}"])
        elif stage == "ingest":
            s["ingest"] = _run_stage("ingest", [f"--ingest_actors={FLAGS.ingest_actors}",
                                                f"--ingest_packed={FLAGS.ingest_packed}"])
            results["ingest"] = s["ingest"]  # also at the top level of --json
        else:
            s[stage] = _run_stage(stage)
    if all(k in s for k in ("env", "actor", "learner")):
        results["bound"] = bound(s["env"], s["actor"], s["learner"][0], cores())
    if all(k in s for k in ("env", "forward", "learner")):
        results["physical_limit"] = physical_limit(
            s.get("env_by_ale_threads", {"default": s["env"]}), s["forward"], s["learner"][0],
            cores())
    if FLAGS.scaling:
        print("running end-to-end scaling ...", flush=True)
        s.setdefault("end_to_end", [])
        for mirrored in (int(d) == 2 for d in FLAGS.scaling_devices):
            for n in (int(a) for a in FLAGS.scaling_actors):
                print(f"  {n} actors, learner on {2 if mirrored else 1} device(s)", flush=True)
                try:
                    s["end_to_end"].append(end_to_end(FLAGS.seconds, FLAGS.gin_file,
                                                      FLAGS.gin_bindings, num_actors=n,
                                                      mirrored=mirrored,
                                                      inference=FLAGS.inference[0]))
                except RuntimeError as error:  # one failed run does not lose the others
                    print(f"  failed: {str(error)[-500:]}", flush=True)
                    s["end_to_end"].append({"num_actors": n, "learner_devices": 1 + mirrored,
                                            "error": str(error)[-2000:]})
    return results


def main(argv) -> None:
    del argv
    from impala_tf import config
    if FLAGS.stage:  # a child: one stage
        quiet.import_tensorflow()
        if FLAGS.stage == "learner" and FLAGS.strategy == "mirrored":
            from impala_tf.distribute import configure_devices
            configure_devices(2)
        config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
        if FLAGS.stage == "learner":
            figures = stage_learner(FLAGS.seconds, FLAGS.strategy)
        elif FLAGS.stage == "ingest":
            from impala_tf.tools.ingest import stage_ingest
            figures = stage_ingest(FLAGS.seconds, FLAGS.ingest_actors, FLAGS.gin_file,
                                   FLAGS.gin_bindings, pack=FLAGS.ingest_packed)
        else:
            figures = globals()[f"stage_{FLAGS.stage}"](FLAGS.seconds)
        with open(FLAGS.stage_out, "w") as f:
            json.dump(figures, f)
        return
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)  # fail early on a bad config
    if set(FLAGS.scaling_devices) - {"1", "2"}:
        raise app.UsageError(f"--scaling_devices takes 1 and 2, not {FLAGS.scaling_devices}")
    if not FLAGS.inference or set(FLAGS.inference) - {"actor", "central"}:
        raise app.UsageError(f"--inference takes actor and central, not {FLAGS.inference}")
    results = run_all()
    print_table(results)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nfigures written to {FLAGS.json}")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.tools.benchmark")


if __name__ == "__main__":
    cli()
