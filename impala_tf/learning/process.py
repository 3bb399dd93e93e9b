"""The wiring of one learner process: the `Learner` (agent, updates, checkpoints, metrics)
and the `ActorEndpoint` that serves its actors and feeds it batches, built in order and
connected here (the launcher and the tests build a learner process through `learner_process`).
"""

from typing import Callable, Mapping, Optional, Tuple

import tensorflow as tf

from impala_tf.learning.batcher import ReadyBatch
from impala_tf.learning.endpoint import ActorEndpoint
from impala_tf.learning.learner import BatchFeed, Feed, Learner
from impala_tf.run_config import RunConfig


class LearnerProcess:
    """A learner and the feed it trains on; `run` trains, `close` frees the port and the
    logdir."""

    def __init__(self, learner: Learner, endpoint: ActorEndpoint, feed: Feed):
        self.learner, self.endpoint, self.feed = learner, endpoint, feed

    # What callers of a learner process read most, named once here.
    @property
    def address(self) -> Optional[str]:
        return self.endpoint.address

    @property
    def service(self):
        return self.endpoint.service

    @property
    def agent(self):
        return self.learner.agent

    @property
    def learner_step(self) -> int:
        return self.learner.learner_step

    @property
    def env_frames(self) -> int:
        return self.learner.env_frames

    def run(self, max_steps: Optional[int] = None,
            progress: Optional[Callable[[dict], None]] = None,
            max_frames: Optional[float] = None) -> dict:
        """`Learner.run` on this process's feed."""
        return self.learner.run(self.feed, max_steps, progress, max_frames)

    def stop(self) -> None:
        """Asks `run` to finish after the current step, and the service to take no more
        unrolls (thread-safe; signal handlers)."""
        self.learner.stop()
        self.endpoint.stopping.set()

    def close(self) -> None:
        self.learner.stop()
        try:
            self.endpoint.close()
        finally:
            self.learner.close()


def learner_process(observation_spec: Mapping[str, tf.TensorSpec], num_actions: int,
                    logdir: str, strategy: Optional[tf.distribute.Strategy] = None,
                    run_config: Optional[RunConfig] = None, server_address: str = "127.0.0.1:0",
                    insecure: bool = False, num_actors: Optional[int] = None,
                    observation_bounds: Optional[Mapping[str, Tuple]] = None,
                    stacked_observations: Optional[Mapping[str, int]] = None,
                    num_envs: Optional[int] = None, central: bool = False,
                    actor_seed: int = 0,
                    batch_source: Optional[Callable[[], Optional[ReadyBatch]]] = None,
                    endpoint_settings: Optional[dict] = None,
                    **learner_settings) -> LearnerProcess:
    """Builds a learner process: the `Learner` first (it takes the logdir's lock, builds the
    agent, restores the latest checkpoint and publishes its parameters), then the
    `ActorEndpoint` sized by them, the one serving the other.

    `batch_source` (tests, benchmarks): the learner trains on the batches this callable
    returns instead; the endpoint then builds its queue and validator but serves nothing.
    `endpoint_settings` and `learner_settings` are keyword arguments of `ActorEndpoint` and
    `Learner` (over their gin settings); `num_actors` is the endpoint's."""
    learner = Learner(observation_spec, num_actions, logdir, strategy=strategy,
                      run_config=run_config, observation_bounds=observation_bounds,
                      central=central, **learner_settings)
    try:
        settings = dict(endpoint_settings or {})
        if num_actors is not None:
            settings["num_actors"] = num_actors
        endpoint = ActorEndpoint(
            learner.agent, observation_spec, num_actions, learner.run_config, learner.strategy,
            learner.parameters, version=lambda: learner.learner_step,
            local_batch_size=learner.local_batch_size, server_address=server_address,
            insecure=insecure, observation_bounds=observation_bounds,
            stacked_observations=stacked_observations, num_envs=num_envs, central=central,
            actor_seed=actor_seed, policy_rng=learner.policy_rng,
            jit_compile=learner.jit_compile,
            serve=batch_source is None, **settings)
    except BaseException:
        learner.close()
        raise
    feed = endpoint if batch_source is None else BatchFeed(batch_source, reports=endpoint)
    return LearnerProcess(learner, endpoint, feed)
