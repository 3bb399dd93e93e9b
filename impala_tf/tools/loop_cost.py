"""The learner loop's own cost per update: what `Learner.run` does around the update itself
(taking the batch, splitting it over the replicas, the policy lag of 256 actor streams'
unrolls, publishing parameters, the metrics window), measured on the configured environment's
agent at B=32, T=20, publishing from the caller (the old way: every variable read back and
encoded after each update) and from the publisher thread, one after the other in one
process (`impala-benchmark --stages=loop`).
"""

import tempfile
import time
from typing import Dict

import numpy as np

NUM_ACTOR_STREAMS = 256


def loop_cost(seconds: float, publish_asynchronously: bool, strategy=None) -> Dict:
    """Runs the real loop for about `seconds` after a warm-up; the update's own time (the
    step call and the wait for its result) is measured apart and taken out."""
    from impala_tf.envs.factory import make_environment
    from impala_tf.learning.batcher import ReadyBatch
    from impala_tf.learning.learner import BatchFeed, Learner
    from impala_tf.networks import build_agent
    from impala_tf.run_config import RunConfig
    from impala_tf.specs import tensor_specs
    from impala_tf.synthetic import synthetic_batch

    probe = make_environment(1)
    spec, num_actions = tensor_specs(probe.observation_spec()), probe.action_spec().num_values
    probe.close()
    run = RunConfig(unroll_length=20, batch_size=32)
    batch = synthetic_batch(build_agent(spec, num_actions), spec, run.unroll_length,
                            run.batch_size)
    rng = np.random.default_rng(0)
    actor_ids = rng.choice(NUM_ACTOR_STREAMS, run.batch_size, replace=False)
    with tempfile.TemporaryDirectory() as logdir:
        learner = Learner(spec, num_actions, logdir, strategy=strategy, run_config=run,
                          log_every_seconds=1.0, checkpoint_every_minutes=1e9,
                          publish_asynchronously=publish_asynchronously)

        def ready():  # unrolls acted 0 to 3 updates ago by 32 of the streams
            lags = rng.integers(0, 4, run.batch_size)
            return ReadyBatch(batch, learner.learner_step - lags, actor_ids)

        update_seconds = [0.0]  # the updates' own time, and the end of run's checkpoint
        step, save = learner._distributed_step, learner.save

        def timed_step(*args):
            started = time.perf_counter()
            stats = step(*args)
            for value in stats.values():
                value.numpy()  # waits for the update
            update_seconds[0] += time.perf_counter() - started
            return stats

        def timed_save():
            started = time.perf_counter()
            path = save()
            update_seconds[0] += time.perf_counter() - started
            return path

        learner._distributed_step, learner.save = timed_step, timed_save
        feed = BatchFeed(ready)
        learner.run(feed, max_steps=3)  # traced, warmed up
        started = time.perf_counter()
        learner.run(feed, max_steps=2)
        steps = max(4, int(seconds / ((time.perf_counter() - started) / 2)))
        update_seconds[0] = 0.0
        started = time.perf_counter()
        record = learner.run(feed, max_steps=steps)
        wall = time.perf_counter() - started
        publisher = learner.publisher
        learner.close()
    return {"publish": "thread" if publish_asynchronously else "caller", "updates": steps,
            "seconds_per_update": wall / steps,
            "update_seconds_per_update": update_seconds[0] / steps,
            "loop_seconds_per_update": (wall - update_seconds[0]) / steps,
            "publish_lag_mean": record.get("publish_lag_mean"),
            "published": publisher.published, "superseded": publisher.superseded}
