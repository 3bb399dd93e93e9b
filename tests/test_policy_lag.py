"""Policy lag under a stalled learner: the decision, and its test.

IMPALA trains on unrolls acted with older parameters and corrects for it with V-trace; the
paper neither drops stale unrolls nor makes actors wait for fresh parameters, and neither
does impala_tf: no bound on the lag is enforced. It is bounded by construction instead:
while the learner stalls, back-pressure stops each actor after a few unrolls (its client's
outbox, what its stream reads ahead, one being written and one waiting for room in the
queue). When the learner comes back, the oldest unroll it trains on is therefore at most
ceil(held / B) updates old, where `held` is what the queue, the batcher's ready batch and
the one it is stacking, and every actor's unrolls in flight can hold. Here real actors feed
a real learner that stalls, and the largest lag it reports is checked against that bound.
"""

import json
import math
import threading
import time

import gin

from deadlines import run_learner, wait_for
from impala_tf import config
from impala_tf.acting.actor import Actor
from impala_tf.envs.factory import make_environment
from impala_tf.learning.process import learner_process
from impala_tf.specs import tensor_specs

B, T, K, ACTORS = 4, 4, 2, 2


def _held_bound(learner, actors) -> int:
    """Unrolls that can sit between the actors and the learner's next update while it
    stalls, from the configuration: the queue, the batcher's ready batch and the batch it
    is stacking, and per actor its outbox, one being written, one waiting for room and what
    gRPC holds of its stream's read-ahead window (up to twice the window: measured in
    test_rpc's stalled-learner test)."""
    endpoint = learner.endpoint
    unroll_bytes = endpoint.validator.unroll_bytes
    read_ahead = endpoint.server.stream_window_bytes // unroll_bytes + 1
    per_actor = sum(a.client._outbox.maxsize for a in actors) / len(actors) + 2 + 2 * read_ahead
    return endpoint.unrolls.maxsize + 2 * B + math.ceil(per_actor) * len(actors)


def test_after_a_stall_the_oldest_unroll_is_within_the_back_pressure_bound(tmp_path):
    config.parse_config(["catch.gin"], [f"RunConfig.unroll_length = {T}",
                                        f"RunConfig.batch_size = {B}",
                                        f"Actor.num_envs = {K}"])
    specs = tensor_specs(make_environment(1).observation_spec())
    learner = learner_process(specs, 3, str(tmp_path), server_address="127.0.0.1:0",
                              num_actors=ACTORS, log_every_seconds=0.0)
    stop = threading.Event()
    actors = [Actor(learner.address, actor_index=i) for i in range(ACTORS)]
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in actors]
    try:
        for thread in threads:
            thread.start()
        # The stall: nobody trains until every actor has stopped getting anywhere.
        sent = [-1]

        def actors_blocked():
            now = sum(a.unrolls_sent for a in actors)
            settled = now == sent[0] and learner.endpoint.unrolls.full()
            sent[0] = now
            return settled

        wait_for(lambda: actors_blocked() or time.sleep(1.0), 120,
                 "the actors to block behind a stalled learner")
        held = sum(a.unrolls_sent for a in actors)
        bound = math.ceil(_held_bound(learner, actors) / B)
        assert held > 2 * B  # the stall really left a backlog
        run_learner(learner, math.ceil(held / B) + 4, 300, "the stalled actors' backlog")
        records = [r for r in _records(tmp_path) if r["policy_lag_max"] is not None]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for actor in actors:
            actor.close(flush=False)
        learner.close()
        gin.clear_config()
    worst = max(r["policy_lag_max"] for r in records)
    # Every unroll acted before the stall (version 0) is trained on in turn: the last of
    # them is about held / B updates old, and never older than the bound.
    assert math.ceil(held / B) - 2 <= worst <= bound, (held, worst, bound)


def _records(logdir):
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
