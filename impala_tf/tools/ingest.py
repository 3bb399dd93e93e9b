"""The benchmark's `ingest` stage: how many actor streams one learner takes, at what CPU.

    python -m impala_tf.tools.benchmark --stages=ingest --ingest_actors=N [--seconds 20]

N actor streams come from light client processes (no environment, no model; up to
`STREAMS_PER_PROCESS` streams a process, one thread each), each sending pre-encoded
unrolls of the experiment's spec, over and over, as fast as the learner takes them: frames
as the actor packs them (`rpc.frame_packing`: the first unroll of a stream whole, then
continued), random pixels, honest values. The
learner in this process is built as the training command builds it (its gRPC server,
validator and batcher) and hands each batch to a step that does nothing. Over the measured
window it reports:

  actors, actors_served      streams, and how many had an unroll accepted in the window;
  frames_per_s               emulator frames in the batches taken;
  learner_cpu_us_per_frame   this process's CPU (getrusage) per frame;
  wire_bytes_per_frame       one (continued) unroll's message bytes over its frames;
  rejected_unrolls           rejections in the window (0 for honest streams).
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Optional

from impala_tf.tools.meters import cpu_seconds

STREAMS_PER_PROCESS = 64


def honest_fields(spec, stacked, seed: int = 0):
    """Flat fields of one honest unroll of `spec` (name -> (dtype, shape)): stacked
    observations (name -> channels per frame) of random frames that shift by one a step,
    as an actor's do, and repeat every T steps, so that step T's stack is step 0's (the
    unroll continues itself: sent again and again, it is a valid stream); integers 0
    (actions, tokens), booleans False, discounts 1, other floats standard normal."""
    import numpy as np
    rng = np.random.default_rng(seed)
    fields = {}
    for name, (dtype, shape) in spec.items():
        observation = name[len("observation/"):] if name.startswith("observation/") else None
        if observation in stacked:
            k = stacked[observation]
            depth, period = shape[-1] // k, max(1, shape[0] - 1)
            base = rng.integers(0, 256, (period,) + tuple(shape[1:-1]) + (k,),
                                dtype=np.uint8).astype(dtype)
            frames = base[np.arange(shape[0] + depth) % period]
            fields[name] = np.stack([np.concatenate(frames[t:t + depth], axis=-1)
                                     for t in range(shape[0])])
        elif dtype.kind in "ui":
            fields[name] = np.zeros(shape, dtype)
        elif dtype.kind == "b":
            fields[name] = np.zeros(shape, bool)
        elif name == "discount":
            fields[name] = np.ones(shape, dtype)
        else:
            fields[name] = rng.normal(size=shape).astype(dtype)
    return fields


def honest_unroll(spec, stacked, actor_id: int, seed: int = 0, pack: bool = True):
    """(first, next): the encoded messages of `honest_fields` from actor `actor_id` that a
    stream sends first and then again and again. Packed (`pack`) as an actor sends them:
    first whole, then continued (`frame_packing.StreamedUnroll`); else whole stacks both, as
    actors sent them before packing (the learner takes both)."""
    from impala_tf.rpc import codec, frame_packing
    fields = honest_fields(spec, stacked, seed)
    meta = {"policy_version": 0, "actor_id": int(actor_id)}
    if not (pack and stacked):
        message = codec.encode(codec.UNROLL_MAGIC, fields, meta)
        return message, message
    streamed = frame_packing.encode_streamed(fields, stacked, meta, env=0)
    return streamed.whole, streamed.continued or streamed.whole


def client_main(address: str, first: int, count: int, spec_file: str, stop_at: float) -> None:
    """A client process: streams for actor ids `first` .. `first + count - 1`."""
    import grpc
    import numpy as np

    from impala_tf.rpc.protocol import ACTOR_ID_METADATA, STREAM_UNROLLS, grpc_options
    with open(spec_file) as f:
        saved = json.load(f)
    spec = {n: (np.dtype(d), tuple(s)) for n, (d, s) in saved["spec"].items()}
    options = grpc_options(64 << 20)

    def stream(actor_id):
        first, message = honest_unroll(spec, saved["stacked"], actor_id, seed=actor_id,
                                       pack=saved["pack"])
        channel = grpc.insecure_channel(address, options=options)

        def requests():
            yield first
            while time.time() < stop_at:
                yield message

        try:
            channel.stream_unary(STREAM_UNROLLS)(
                requests(), timeout=stop_at - time.time() + 30,
                metadata=((ACTOR_ID_METADATA, str(actor_id)),))
        except grpc.RpcError:
            pass
        channel.close()

    threads = [threading.Thread(target=stream, args=(first + i,), daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _wait_for_streams(counters, num_actors: int, settle_seconds: float = 5.0,
                      timeout_seconds: float = 300.0) -> None:
    """Until every stream has had an unroll accepted, or no new one has for
    `settle_seconds` (streams past the server's limit never are), or the timeout: the
    clients start TensorFlow-importing processes, which takes a while on a loaded machine."""
    deadline = time.time() + timeout_seconds
    seen, last_new = 0, time.time()
    while time.time() < deadline:
        served = len(counters.by_actor())
        if served >= num_actors:
            return
        if served > seen:
            seen, last_new = served, time.time()
        elif seen and time.time() - last_new >= settle_seconds:
            return
        time.sleep(0.2)


def stage_ingest(seconds: float, num_actors: int, gin_files, gin_bindings,
                 warmup_seconds: Optional[float] = None, pack: bool = True) -> Dict:
    """See the module docstring; the learner accepts the N streams' actor ids. `pack=False`
    sends whole stacks, the wire format before `rpc.frame_packing`. The window opens once
    the streams have connected (`_wait_for_streams`) and run `warmup_seconds` more
    (default: half the window, 2 to 10 s)."""
    import gin

    from impala_tf import config
    from impala_tf.rpc import codec
    from impala_tf.launcher import build_learner
    config.parse_config(gin_files, list(gin_bindings) + [f"ActorEndpoint.num_actors = {num_actors}"])
    workdir = tempfile.mkdtemp(prefix="ingest_")
    process = build_learner(os.path.join(workdir, "run"), "127.0.0.1:0")
    learner, endpoint = process.learner, process.endpoint
    spec = codec.spec_from_tensor_specs(endpoint.wire_spec)
    stacked = endpoint.validator.stacked
    spec_file = os.path.join(workdir, "spec.json")
    with open(spec_file, "w") as f:
        json.dump({"spec": {n: [d.str, list(s)] for n, (d, s) in spec.items()},
                   "stacked": stacked, "pack": pack}, f)
    unroll_frames = learner.frames_per_batch // learner.run_config.batch_size
    message_bytes = len(honest_unroll(spec, stacked, 0, pack=pack)[1])
    taken = [0]
    stop = threading.Event()

    def null_step():  # takes each batch and does nothing with it
        while not stop.is_set():
            if endpoint.batcher.next(timeout=0.1) is not None:
                taken[0] += 1

    if warmup_seconds is None:
        warmup_seconds = min(10.0, max(2.0, seconds / 2))
    consumer = threading.Thread(target=null_step, daemon=True)
    consumer.start()
    stop_at = time.time() + 3600  # the clients are ended below, once measured
    processes = math.ceil(num_actors / STREAMS_PER_PROCESS)
    clients = []
    for p in range(processes):
        first = p * STREAMS_PER_PROCESS
        count = min(STREAMS_PER_PROCESS, num_actors - first)
        clients.append(subprocess.Popen(
            [sys.executable, "-m", "impala_tf.tools.ingest", process.address, str(first),
             str(count), spec_file, str(stop_at)],
            env=dict(os.environ, CUDA_VISIBLE_DEVICES="")))
    counters = endpoint.service.counters
    try:
        _wait_for_streams(counters, num_actors)
        time.sleep(warmup_seconds)
        by_actor0, rejected0 = counters.by_actor(), counters.rejected
        batches0, cpu0, t0 = taken[0], cpu_seconds(), time.time()
        time.sleep(seconds)
        batches1, cpu1, t1 = taken[0], cpu_seconds(), time.time()
        by_actor1, rejected1 = counters.by_actor(), counters.rejected
    finally:
        for client in clients:
            client.terminate()
        for client in clients:
            try:
                client.wait(timeout=30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        stop.set()
        process.close()
        gin.clear_config()
    frames = (batches1 - batches0) * learner.frames_per_batch
    served = sum(by_actor1.get(a, 0) > by_actor0.get(a, 0) for a in by_actor1)
    return {"actors": num_actors, "actors_served": served,
            "frames_per_s": frames / (t1 - t0),
            "learner_cpu_us_per_frame": 1e6 * (cpu1 - cpu0) / frames if frames else None,
            "wire_bytes_per_frame": message_bytes / unroll_frames,
            "rejected_unrolls": rejected1 - rejected0,
            "packed": pack, "max_concurrent_rpcs": endpoint.server.max_concurrent_rpcs,
            "client_processes": processes}


if __name__ == "__main__":
    client_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                float(sys.argv[5]))
