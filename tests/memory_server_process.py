"""A learner's gRPC service alone (no TensorFlow) for the memory tests: an Atari-like unroll
spec, the message limit derived from it, and Python's automatic garbage collection switched
off, so that anything a rejected call leaves in a reference cycle stays and shows in the
resident memory. Prints `ADDRESS LIMIT`, then answers each `garbage` line on stdin with the
unreachable objects by type (JSON; found by one collection, then freed), and a `collect
automatically` line by switching the collector back on, until stdin closes."""

import collections
import gc
import json
import os
import sys
import threading

import numpy as np

from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.unroll_queue import UnrollQueue
from impala_tf.rpc.validation import UnrollValidator

T = 20
SPEC = {
    "observation/frame": (np.dtype(np.uint8), (T + 1, 84, 84, 4)),
    "action": (np.dtype(np.int32), (T + 1,)),
    "reward": (np.dtype(np.float32), (T + 1,)),
    "discount": (np.dtype(np.float32), (T + 1,)),
    "behaviour_logits": (np.dtype(np.float32), (T + 1, 6)),
}


def main() -> None:
    if not os.environ.get("KEEP_GC"):
        gc.disable()
    validator = UnrollValidator(SPEC, 6, None, num_actors=64, num_envs=8)  # derived limit
    limit = validator.max_message_bytes
    service = LearnerService(validator, UnrollQueue(maxsize=32), ParameterStore(),
                             threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", limit).start()
    print(server.address, limit, flush=True)
    for line in sys.stdin:
        if line.strip() == "collect automatically":
            gc.enable()
            print("ok", flush=True)
        if line.strip() == "garbage":
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
            gc.garbage.clear()
            gc.set_debug(0)
            gc.collect()
            print(json.dumps(kinds), flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
