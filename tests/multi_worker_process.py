"""One worker of the multi-worker learner test (run by tests/test_multi_worker.py with
TF_CONFIG set): 3 learner steps under MultiWorkerMirroredStrategy on its own local batch,
then a JSON line with its step count, and its weights before and after in
LOGDIR/weights_worker{index}.npz (`initial_i`, `final_i`)."""

import json
import os
import sys

import impala_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from impala_tf import config
from impala_tf.learning.batcher import ReadyBatch
from impala_tf.distribute import make_strategy
from impala_tf.learning.process import learner_process
from impala_tf.networks import Agent
from impala_tf.run_config import RunConfig
from impala_tf.synthetic import synthetic_batch


def main(logdir: str, worker_index: int, stop_after: int = 0) -> None:
    """`stop_after` > 0: worker 1 alone calls `stop()` once it has made that many batches
    (as a SIGTERM on its process would); run(max_steps=50) then."""
    strategy = make_strategy("multi_worker")
    config.parse_config([], ["Agent.torso = 'mlp'", "Agent.lstm_size = 8"])
    spec = {"frame": tf.TensorSpec([10, 5, 1], tf.uint8)}
    run = RunConfig(unroll_length=4, batch_size=4, total_environment_frames=1e6,
                    num_action_repeats=1)
    local = synthetic_batch(Agent(3, spec, torso="mlp", lstm_size=8), spec, 4, 2, 0.2,
                            seed=worker_index)  # each worker its own half of the batch
    tf.random.set_seed(0)
    made = []

    def batches():
        made.append(1)
        if stop_after and worker_index == 1 and len(made) > stop_after:
            learner.stop()
        return ReadyBatch(local, np.zeros(2, np.int64))

    learner = learner_process(spec, 3, logdir, strategy=strategy, run_config=run,
                      batch_source=batches,
                      log_every_seconds=0.0)  # the chief comes from TF_CONFIG
    initial = learner.agent.get_weights()
    record = learner.run(max_steps=50 if stop_after else 3)
    weights = learner.agent.get_weights()
    np.savez(os.path.join(logdir, f"weights_worker{worker_index}.npz"),
             **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"final_{i}": w for i, w in enumerate(weights)})
    print(json.dumps({
        "worker": worker_index, "identity": list(learner.learner.worker),
        "is_chief": learner.learner.is_chief, "steps": learner.learner_step, "frames": learner.env_frames,
        "replicas": strategy.num_replicas_in_sync,
        "loss": record.get("total_loss")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
