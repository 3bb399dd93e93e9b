"""A long fuzz run of what arrives over the network, in three modes.

    python experiments/fuzz_wire.py --examples 100000 [--seed 7]
        The property-based tests of tests/test_wire_fuzz.py and tests/test_hostile_input.py
        (decoder, validator, header grammar, live gRPC service) with many more examples;
        prints hypothesis' statistics and exits non-zero with the smallest failing message
        if a property breaks.

    python experiments/fuzz_wire.py --report --cases 20000 [--seed 7]
        Generates CASES messages of each kind an attack tries (header-grammar attacks:
        deep nesting, huge integers, huge or non-finite floats, wrong types; valid-spec
        extreme values in every field; meta out of bounds; honest unrolls as the control)
        and runs them through the learner's validator. Prints, per kind, how many were
        rejected as `CodecError`, accepted, and escaped (any other exception); exits
        non-zero if anything escaped, if a hostile case was accepted or an honest one not.

    python experiments/fuzz_wire.py --hostile_memory 100000 [--gin_file catch.gin]
        Builds the experiment's learner as `train` does and sends it that many distinct
        hostile messages (each its own reason text, actor id or level name) over loopback
        from a client process; prints the learner process's resident memory before and
        after, and its counters' sizes.

    python experiments/fuzz_wire.py --idle_callers 300 [--seconds 20] [--reopen_seconds 0.5]
        [--inference actor|central]
        Catch's learner and one honest actor, alone and then under that many idle callers
        (streams, Act calls and parameter pulls that send nothing, reopened when refused):
        prints the learner's frames/s in both windows.
"""

import argparse
import collections
import json
import os
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = [os.path.join(HERE, "..", "tests", name)
         for name in ("test_wire_fuzz.py", "test_hostile_input.py")]

NUM_ACTIONS, NUM_ACTORS, T = 9, 64, 20


def _spec():
    import numpy as np
    return {
        "observation/frame": (np.dtype(np.uint8), (T + 1, 24, 32, 3)),
        "observation/instruction": (np.dtype(np.int32), (T + 1, 16)),
        "action": (np.dtype(np.int32), (T + 1,)),
        "reward": (np.dtype(np.float32), (T + 1,)),
        "discount": (np.dtype(np.float32), (T + 1,)),
        "episode_start": (np.dtype(np.bool_), (T + 1,)),
        "behaviour_logits": (np.dtype(np.float32), (T + 1, NUM_ACTIONS)),
        "core_state/c": (np.dtype(np.float32), (64,)),
        "core_state/h": (np.dtype(np.float32), (64,)),
    }


def _validator():
    from impala_tf.rpc.validation import UnrollLimits, UnrollValidator
    return UnrollValidator(_spec(), NUM_ACTIONS, 8 << 20, UnrollLimits(),
                           {"frame": (0, 255), "instruction": (0, 1000)}, NUM_ACTORS)


def _honest_fields(rng):
    import numpy as np
    return {
        "observation/frame": rng.integers(0, 256, (T + 1, 24, 32, 3)).astype(np.uint8),
        "observation/instruction": rng.integers(0, 1001, (T + 1, 16)).astype(np.int32),
        "action": rng.integers(0, NUM_ACTIONS, T + 1).astype(np.int32),
        "reward": rng.normal(size=T + 1).astype(np.float32),
        "discount": (rng.random(T + 1) < 0.95).astype(np.float32),
        "episode_start": rng.random(T + 1) < 0.05,
        "behaviour_logits": rng.normal(size=(T + 1, NUM_ACTIONS)).astype(np.float32),
        "core_state/c": rng.normal(size=64).astype(np.float32),
        "core_state/h": np.tanh(rng.normal(size=64)).astype(np.float32),
    }


def _honest_meta(rng):
    return {"policy_version": int(rng.integers(0, 10**6)),
            "actor_id": int(rng.integers(0, NUM_ACTORS)),
            "episodes": [[float(rng.normal(0, 100)), int(rng.integers(1, 10**5)), "level"]]}


def _framed(header: str, payload: bytes = b"") -> bytes:
    from impala_tf.rpc import codec
    raw = header.encode()
    return codec.UNROLL_MAGIC + struct.pack("<I", len(raw)) + raw + payload


def _honest_parts(rng):
    """(header text, payload) of an honest unroll: a hostile header keeps the payload, so
    that only what it changed can make it fail."""
    from impala_tf.rpc import codec
    message = codec.encode(codec.UNROLL_MAGIC, _honest_fields(rng), _honest_meta(rng))
    (length,) = struct.unpack_from("<I", message, 4)
    return message[8:8 + length].decode(), message[8 + length:]


def _hostile_header(rng, value: str) -> bytes:
    header, payload = _honest_parts(rng)
    return _framed(_replace_one_value(rng, header, value), payload)


def _replace_one_value(rng, header: str, value: str) -> str:
    """The header with one of its numbers, strings or lists replaced by `value`."""
    import re
    spans = [m.span() for m in re.finditer(r'-?\d+(?:\.\d+)?(?:e-?\d+)?|"[^"]*"|\[\]', header)]
    start, end = spans[int(rng.integers(len(spans)))]
    return header[:start] + value + header[end:]


def _case(kind: str, rng) -> bytes:
    """One message of `kind` (see the module docstring)."""
    from impala_tf.rpc import codec
    if kind == "honest":
        return codec.encode(codec.UNROLL_MAGIC, _honest_fields(rng), _honest_meta(rng))
    if kind == "header: deep nesting":
        depth = int(rng.integers(17, 100_000))
        return _hostile_header(rng, "[" * depth + "]" * depth)
    if kind == "header: huge integer":
        digits = int(rng.integers(20, 10_000))
        return _hostile_header(rng, str(int(rng.integers(1, 10))) + "0" * digits)
    if kind == "header: huge or non-finite float":
        value = rng.choice(["NaN", "Infinity", "-Infinity", f"1e{int(rng.integers(309, 10**6))}",
                            f"-9.9e{int(rng.integers(309, 999))}", "1" * 400 + ".5"])
        return _hostile_header(rng, str(value))
    if kind == "header: wrong type":
        value = rng.choice(['"x"', "true", "null", "{}", "[1,2]", '{"a":[]}', "[[[]]]", "-1",
                            "0.5", '""', "[null]", '[1, "a", 3]'])
        return _hostile_header(rng, str(value))
    if kind == "valid spec: extreme value":
        fields = _honest_fields(rng)
        name, value = [
            ("discount", 1e30), ("discount", 3.4e38), ("discount", -1e30),
            ("discount", 1.001), ("discount", -0.001), ("reward", 3.4e38), ("reward", -2e6),
            ("behaviour_logits", 3e38), ("behaviour_logits", -1e5), ("core_state/c", 1e30),
            ("core_state/h", -3e38), ("observation/instruction", 1001),
            ("observation/instruction", -5), ("observation/instruction", 2**31 - 1),
            ("action", NUM_ACTIONS), ("action", -1)][int(rng.integers(16))]
        flat = fields[name].reshape(-1)
        flat[int(rng.integers(flat.size))] = value
        return codec.encode(codec.UNROLL_MAGIC, fields, _honest_meta(rng))
    if kind == "meta: out of bounds":
        meta = _honest_meta(rng)
        key, value = [
            ("actor_id", int(rng.integers(NUM_ACTORS, 2**62))), ("actor_id", -1),
            ("policy_version", -1), ("policy_version", 2**62), ("actor_id", 1.5),
            ("episodes", [[1e308, 10, "x"]]), ("episodes", [[-1e10, 10, "x"]]),
            ("episodes", [[1.0, 10**12, "x"]]), ("episodes", [[1.0, 10, "x" * 201]]),
            ("episodes", [[1.0, 10, "x"]] * 1001), ("episodes", [[True, 10, "x"]]),
            ("episodes", "many")][int(rng.integers(12))]
        meta[key] = value
        return codec.encode(codec.UNROLL_MAGIC, _honest_fields(rng), meta)
    if kind == "meta: forged statistics and text":
        meta = _honest_meta(rng)
        meta["episodes"] = [
            [[1.0, 10, "x\ud800"]], [[1.0, 10, "\x1b[2J"]], [[1.0, 10, "level\n"]],
            [[1.0, 10, "\u202egnop"]], [[1e9, 100, "x"]], [[0.5, 0, "x"]],
            [[1.0, 10, "x"]] * (_validator().max_episodes_per_unroll + 1),
            [[2e6 * 10, 10, "x"]]][int(rng.integers(8))]
        return codec.encode(codec.UNROLL_MAGIC, _honest_fields(rng), meta)
    raise ValueError(kind)


KINDS = ("honest", "header: deep nesting", "header: huge integer",
         "header: huge or non-finite float", "header: wrong type", "valid spec: extreme value",
         "meta: out of bounds", "meta: forged statistics and text")


def report(cases: int, seed: int) -> int:
    import numpy as np
    from impala_tf.rpc import codec
    validator = _validator()
    rng = np.random.default_rng(seed)
    print(f"{'kind':36s} {'cases':>7s} {'rejected':>9s} {'accepted':>9s} {'escaped':>8s} "
          f"{'us/case (making it too)':>26s}")
    failures = 0
    escapes = collections.Counter()
    for kind in KINDS:
        counts = collections.Counter()
        start = time.perf_counter()
        for _ in range(cases):
            message = _case(kind, rng)
            try:
                validator(message)
                counts["accepted"] += 1
            except codec.CodecError:
                counts["rejected"] += 1
            except Exception as error:  # noqa: BLE001 (what this counts)
                counts["escaped"] += 1
                escapes[f"{kind}: {type(error).__name__}: {str(error)[:80]}"] += 1
        per_case = 1e6 * (time.perf_counter() - start) / cases
        print(f"{kind:36s} {cases:7d} {counts['rejected']:9d} {counts['accepted']:9d} "
              f"{counts['escaped']:8d} {per_case:26.0f}", flush=True)
        wrong = counts["rejected"] if kind == "honest" else counts["accepted"]
        failures += counts["escaped"] + (wrong if kind != "header: wrong type" else 0)
    for escape, n in escapes.most_common(10):
        print(f"  escaped {n}x: {escape}")
    print("nothing escaped" if not escapes else f"{sum(escapes.values())} escaped")
    return 1 if failures else 0


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _hostile_client(address: str, count: int, threads: int, spec_file: str) -> None:
    """Client process: `count` distinct hostile messages, one stream each: a distinct
    reason text (a discount of 2 + i), a distinct actor id, or a distinct level name with an
    out-of-bounds return, in turn."""
    import grpc
    import numpy as np
    from impala_tf.rpc import codec
    from impala_tf.rpc.protocol import STREAM_UNROLLS
    from impala_tf.tools.ingest import honest_fields
    with open(spec_file) as f:
        spec = {name: (np.dtype(dtype), tuple(shape))
                for name, (dtype, shape) in json.load(f).items()}
    channel = grpc.insecure_channel(address)
    stream = channel.stream_unary(STREAM_UNROLLS)
    fields = honest_fields(spec, stacked={})
    steps = spec["discount"][1]

    def send(start):
        for i in range(start, count, threads):
            which = i % 3
            if which == 0:
                bad = dict(fields, discount=np.full(steps, 2.0 + i, np.float32))
                message = codec.encode(codec.UNROLL_MAGIC, bad, {"policy_version": 0,
                                                                  "actor_id": 0})
            elif which == 1:
                message = codec.encode(codec.UNROLL_MAGIC, fields,
                                       {"policy_version": 0, "actor_id": 10**6 + i})
            else:
                message = codec.encode(codec.UNROLL_MAGIC, fields, {
                    "policy_version": 0, "actor_id": 0,
                    "episodes": [[1e300, 10, f"level-{i}"]]})
            try:
                stream(iter([message]), timeout=30)
            except grpc.RpcError:
                pass

    workers = [threading.Thread(target=send, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def hostile_memory(count: int, threads: int, gin_file: str) -> int:
    """A real learner (`gin_file`'s, built as `train` builds it, TensorFlow and all) under
    `count` distinct hostile messages from a client process: its resident memory before and
    after, and its counters' sizes."""
    import tempfile
    from impala_tf import config
    from impala_tf.rpc import codec
    from impala_tf.launcher import build_learner
    config.parse_config([gin_file])
    workdir = tempfile.mkdtemp(prefix="hostile_memory_")
    learner = build_learner(os.path.join(workdir, "run"), "127.0.0.1:0")
    spec_file = os.path.join(workdir, "spec.json")
    with open(spec_file, "w") as f:
        json.dump({name: [dtype.str, list(shape)] for name, (dtype, shape)
                   in codec.spec_from_tensor_specs(learner.wire_spec).items()}, f)

    def run_client(n):
        subprocess.run([sys.executable, __file__, "--_client", learner.address, str(n),
                        str(threads), spec_file], check=True)

    counters = learner.service.counters
    run_client(2000)  # warm-up: gRPC's and Python's pools reach their working size
    before, rejected_before = _rss_mib(), counters.rejected
    start = time.time()
    run_client(count)
    elapsed = time.time() - start
    after = _rss_mib()
    print(json.dumps({
        "learner": gin_file, "hostile_messages": count, "seconds": round(elapsed, 1),
        "rejected": counters.rejected - rejected_before,
        "accepted": counters.accepted,
        "rss_mib_before": round(before, 1), "rss_mib_after": round(after, 1),
        "rss_mib_growth": round(after - before, 1),
        "distinct_reasons_kept": len(counters.rejected_reasons),
        "actor_table_entries": len(counters.by_actor()),
    }, indent=1))
    learner.close()
    return 0


def _idle_client(address: str, count: int, reopen_seconds: float) -> None:
    """`count` idle callers (a third each on StreamUnrolls, Act and GetParameters) that send
    nothing and open their call again `reopen_seconds` after it is refused or closed (never,
    if negative), until stdin closes."""
    import threading
    import grpc
    from impala_tf.rpc.protocol import ACT, GET_PARAMETERS, STREAM_UNROLLS
    release = threading.Event()

    def hold():
        release.wait()
        return
        yield

    def attacker(method):
        channel = grpc.insecure_channel(address)
        while not release.is_set():
            try:
                call = (channel.stream_stream(method)(hold(), timeout=3600) if method == ACT
                        else channel.stream_unary(method)(hold(), timeout=3600))
                list(call) if method == ACT else None
            except grpc.RpcError:
                if reopen_seconds < 0:
                    release.wait()
                release.wait(reopen_seconds)
        channel.close()

    methods = [STREAM_UNROLLS, ACT, GET_PARAMETERS]
    threads = [threading.Thread(target=attacker, args=(methods[i % 3],), daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    sys.stdin.read()
    release.set()


def idle_callers(count: int, seconds: float, reopen_seconds: float,
                 inference: str = "actor") -> int:
    """Catch's learner with one honest actor (in this process), for `seconds` alone and then
    for `seconds` under `count` idle callers that name no actor (a third each on
    StreamUnrolls, Act and GetParameters; their refused calls are opened again): prints the
    learner's frames/s in both windows and the calls refused and closed."""
    import threading
    import gin
    from impala_tf import config
    from impala_tf.acting.actor import Actor
    from impala_tf.launcher import build_learner
    import tempfile
    config.parse_config(["catch.gin"], ["Launcher.num_actors = 1",
                                        f"Launcher.inference = '{inference}'"])
    learner = build_learner(tempfile.mkdtemp(), "127.0.0.1:0")
    stop = threading.Event()
    if inference == "central":
        from impala_tf.acting.env_actor import EnvActor
        actor = EnvActor(learner.address, actor_index=0)
    else:
        actor = Actor(learner.address, actor_index=0)
    threading.Thread(target=actor.run, args=(stop,), daemon=True).start()
    trainer = threading.Thread(target=learner.run, daemon=True)
    trainer.start()

    def frames_per_second(window):
        time.sleep(5)  # past start-up
        start, frames = time.time(), learner.env_frames
        time.sleep(window)
        return (learner.env_frames - frames) / (time.time() - start)

    alone = frames_per_second(seconds)
    # The callers run in a process of their own: hundreds of client threads in the learner's
    # process would measure their own share of its interpreter, not the server's defences.
    attackers = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_idle_client",
                                  learner.address, str(count), str(reopen_seconds)],
                                 stdin=subprocess.PIPE)
    start = time.time()
    attacked = frames_per_second(seconds)
    with open(f"/proc/{attackers.pid}/stat") as f:  # utime + stime, in clock ticks
        ticks = sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
    attacker_cores = ticks / os.sysconf("SC_CLK_TCK") / (time.time() - start)
    counters = learner.service.counters
    print(f"Catch, {inference} inference, one honest actor: {alone:,.0f} frames/s alone, {attacked:,.0f} under "
          f"{count} idle callers ({attacked / max(alone, 1e-9):.0%}); refused calls "
          f"{counters.refused_calls:,d}, unauthenticated {counters.unauthenticated:,d}, idle "
          f"calls closed {counters.idle_closed}, slots held "
          f"{learner.service.calls.held()}; the callers' process used {attacker_cores:.2f} "
          f"of this machine's {os.cpu_count()} cores")
    attackers.stdin.close()
    attackers.wait(60)
    learner.stop()
    trainer.join(60)
    stop.set()
    actor.close() if inference == "central" else actor.close(flush=False)
    learner.close()
    gin.clear_config()
    return 0 if attacked > 0.5 * alone else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000,
                        help="examples per property test (service tests run a tenth as many)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis or report seed")
    parser.add_argument("--report", action="store_true", help="per-kind counts (see above)")
    parser.add_argument("--cases", type=int, default=20000, help="--report: cases per kind")
    parser.add_argument("--hostile_memory", type=int, default=None, metavar="N",
                        help="send N distinct hostile messages to a live service")
    parser.add_argument("--threads", type=int, default=4, help="--hostile_memory clients")
    parser.add_argument("--gin_file", default="catch.gin",
                        help="--hostile_memory: the experiment whose learner is attacked")
    parser.add_argument("--idle_callers", type=int, default=None, metavar="N",
                        help="frames/s of Catch's honest actor alone and under N idle callers")
    parser.add_argument("--seconds", type=float, default=20.0, help="--idle_callers: window")
    parser.add_argument("--_client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--reopen_seconds", type=float, default=0.5,
                        help="--idle_callers: a refused caller calls again after this long "
                             "(negative: never)")
    parser.add_argument("--inference", choices=["actor", "central"], default="actor",
                        help="--idle_callers: the learner's inference mode")
    parser.add_argument("--_idle_client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, ".."))
    if args._client:
        _hostile_client(args._client[0], int(args._client[1]), int(args._client[2]),
                        args._client[3])
        return 0
    if args.report:
        return report(args.cases, args.seed or 0)
    if args._idle_client:
        _idle_client(args._idle_client[0], int(args._idle_client[1]),
                     float(args._idle_client[2]))
        return 0
    if args.idle_callers:
        return idle_callers(args.idle_callers, args.seconds, args.reopen_seconds,
                            args.inference)
    if args.hostile_memory:
        return hostile_memory(args.hostile_memory, args.threads, args.gin_file)
    env = dict(os.environ, HYPOTHESIS_PROFILE="fuzz", HYPOTHESIS_EXAMPLES=str(args.examples),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics", "--timeout=0"]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
