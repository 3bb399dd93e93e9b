"""The learner process's side that faces the actors: the unroll queue, the validator, the
gRPC service and server, the batcher and, in central mode, central inference, built and
connected here, and offered to the learner as its `learner.Feed`.

  actors --gRPC--> LearnerServer -> LearnerService --validated--> UnrollQueue -> Batcher
                                          |   (central mode: steps -> CentralInference,
                                          |    which assembles the unrolls into the queue)
  actors <--gRPC-- parameters (the learner's ParameterStore)
"""

import threading
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import gin
import tensorflow as tf

from impala_tf.learning.batcher import Batcher, ReadyBatch
from impala_tf.learning.central_inference import CentralInference
from impala_tf.learning.placement import frames_on_device
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.counters import EpisodeTally
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import METHODS, LearnerService
from impala_tf.rpc.unroll_queue import UnrollQueue
from impala_tf.rpc.validation import UnrollLimits, UnrollValidator
from impala_tf.run_config import RunConfig
from impala_tf.specs import unroll_wire_spec


@gin.configurable(allowlist=["queue_capacity", "max_message_bytes", "max_concurrent_rpcs",
                             "idle_seconds", "num_actors", "stack_frames_on"])
class ActorEndpoint:
    """Serves the actors and batches their unrolls (module docstring).

    Args:
      agent: the learner's agent (its initial state shapes the unrolls' core state; central
        inference acts with it).
      observation_spec, num_actions: the environment's.
      run_config: unroll length and batch size.
      strategy: the learner's (where frames are stacked; central inference's device).
      parameters: the learner's published parameters, served to actors.
      version: the learner step now (central inference's unroll versions).
      local_batch_size: this learner worker's unrolls per batch.
      server_address: where the gRPC server listens (port 0: any free port).
      insecure: let the server bind a non-loopback address without TLS and a token
        (`rpc.security`; `train --insecure`).
      queue_capacity: unrolls held between the service and the batcher (bounds memory and,
        when the learner is the bottleneck, the policy lag); default: one batch.
      max_message_bytes: the largest message accepted (gRPC refuses a larger one before
        reading it); None: what an honest actor sends, derived from the unroll spec (a
        whole unroll and the episodes its steps could finish; in central mode, or a step
        of K environments), a few hundred kB on Atari rather than a fixed 64 MiB.
      max_concurrent_rpcs: gRPC's cap on calls at once, admitted or being refused
        (streams do not hold threads); default: every actor id's slots and the anonymous
        pool (`rpc.admission.CallBudget`) plus 64. Which calls may hold the learner is
        decided per actor id (`rpc.admission`); a call refused either way gets
        RESOURCE_EXHAUSTED, which the actors retry with backoff.
      idle_seconds: a call whose caller sends nothing for this long is closed and counted
        (`idle_calls_closed`); None: derived from the unroll length
        (`rpc.admission.idle_deadline_seconds`: 30 s on Atari, 100 s on DMLab).
      num_actors: the run's actor count: unrolls are accepted from actor ids 0 to
        num_actors - 1 only (`train` derives it from `Launcher.num_actors` and the learner
        workers; None: `validation.DEFAULT_NUM_ACTORS`).
      observation_bounds: observation name -> (minimum, maximum), the environment's
        (`specs.observation_bounds`): unrolls outside them are rejected.
      stacked_observations: the environment's (`BatchedEnv.stacked_observations`): actors
        send those observations packed, each frame once (`frames`).
      num_envs: environments per actor (`Actor.num_envs`): a stream keeps the last stack of
        at most this many (None: `validation.DEFAULT_NUM_ENVS`).
      stack_frames_on: where stacked frames become the agent's stacks: 'host' (the batcher
        interleaves their pixels: for a learner on CPU, where TensorFlow's gather and
        transpose cost more), 'device' (the batcher copies each frame once,
        `device_frames.PackedFrames`, and the train step gathers the stacks on the accelerator), or
        'auto': 'device' when the learner has a GPU or TPU.
      central: serve central inference (`Launcher.inference = 'central'`,
        `central_inference`): environment actors send steps, the learner acts for them on
        its device (the strategy's first, a TPU core included) and assembles their unrolls.
      actor_seed: `Actor.seed`, which central inference seeds its environment actors from.
      policy_rng: central inference's action sampling generator (the learner's, which it
        checkpoints).
      jit_compile: XLA-compile central inference's step (the learner's setting; a TPU
        always compiles it).
      serve: False builds the queue and validator only (no server, batcher or central
        inference): for tests that feed the learner themselves.
    """

    def __init__(self, agent, observation_spec: Mapping[str, tf.TensorSpec], num_actions: int,
                 run_config: RunConfig, strategy: tf.distribute.Strategy,
                 parameters: ParameterStore, version: Callable[[], int],
                 local_batch_size: int, server_address: str = "127.0.0.1:0",
                 insecure: bool = False, queue_capacity: Optional[int] = None,
                 max_message_bytes: Optional[int] = None,
                 max_concurrent_rpcs: Optional[int] = None,
                 idle_seconds: Optional[float] = None, num_actors: Optional[int] = None,
                 observation_bounds: Optional[Mapping[str, Tuple]] = None,
                 stacked_observations: Optional[Mapping[str, int]] = None,
                 num_envs: Optional[int] = None, stack_frames_on: str = "auto",
                 central: bool = False, actor_seed: int = 0,
                 policy_rng: Optional[tf.random.Generator] = None, jit_compile: bool = False,
                 serve: bool = True):
        self.server: Optional[LearnerServer] = None
        self.central: Optional[CentralInference] = None
        self.batcher: Optional[Batcher] = None
        self.stopping = threading.Event()
        self._local_frames = (local_batch_size * run_config.unroll_length
                              * run_config.num_action_repeats)  # frames of this worker's batch
        self.frames_on_device = frames_on_device(stack_frames_on, strategy)
        initial_state = agent.initial_state(1)
        self.wire_spec = unroll_wire_spec(observation_spec, num_actions,
                                          run_config.unroll_length, initial_state)
        self.unrolls = UnrollQueue(maxsize=queue_capacity or max(1, local_batch_size))
        self.validator = UnrollValidator(
            codec.spec_from_tensor_specs(self.wire_spec), num_actions, max_message_bytes,
            UnrollLimits(), observation_bounds, num_actors, stacked_observations, num_envs,
            core_state_template=initial_state)
        observations = {name: (spec.dtype.as_numpy_dtype, tuple(spec.shape))
                        for name, spec in observation_spec.items()}
        # An explicit limit, else the largest message an honest actor of this run sends: an
        # unroll (the validator's own limit) or, in central mode, a step of K environments.
        self.max_message_bytes = max_message_bytes or max(
            self.validator.max_message_bytes,
            step_messages.step_message_limit(observations, self.validator.num_envs)
            if central else 0)
        self.service = LearnerService(self.validator, self.unrolls, parameters, self.stopping,
                                      idle_seconds=idle_seconds)
        if not serve:
            return
        try:
            if central:
                self.central = CentralInference(
                    agent, self.unrolls, self.service.counters, observations, num_actions,
                    self.validator.num_envs, run_config.unroll_length,
                    self.validator.num_actors,
                    is_refused=lambda actor_id: actor_id in self.validator.refused,
                    version=version, env_seed=int(actor_seed),
                    stacked_observations=stacked_observations,
                    observation_bounds=observation_bounds, limits=self.validator.limits,
                    max_message_bytes=self.max_message_bytes, policy_rng=policy_rng,
                    strategy=strategy, jit_compile=jit_compile)
                self.service.central = self.central
            self.server = LearnerServer(
                self.service, server_address, self.max_message_bytes,
                max_concurrent_rpcs=max_concurrent_rpcs or 64 + self.service.calls.most_held(
                    self.validator.num_actors, len(METHODS)),
                insecure=insecure,
                max_send_bytes=max(self.max_message_bytes,
                                   parameters.payload_bytes + (1 << 20))).start()
            if local_batch_size % run_config.num_minibatches:
                raise ValueError(
                    f"Each worker's batch of {local_batch_size} unrolls does not split into "
                    f"RunConfig.num_minibatches = {run_config.num_minibatches}.")
            self.batcher = Batcher(self.unrolls, local_batch_size, initial_state,
                                   frames_on_device=self.frames_on_device)
            if self.central is not None:
                self.central.start()
        except BaseException:  # a half-built endpoint frees its port
            self.close()
            raise

    @property
    def address(self) -> Optional[str]:
        return self.server.address if self.server else None

    # -- the learner's Feed --------------------------------------------------------------------
    def next_batch(self) -> Optional[ReadyBatch]:
        return self.batcher.next()

    def refuse(self, actor_ids: List[int]) -> bool:
        return self.validator.refuse(actor_ids)

    def pop_episodes(self) -> EpisodeTally:
        return self.service.counters.pop_episodes()

    def ingest_metrics(self) -> Dict[str, object]:
        counters = self.service.counters
        return {
            "queue_fill": self.unrolls.qsize() / max(1, self.unrolls.maxsize),
            "rejected_unrolls": counters.rejected,
            "accepted_unrolls": counters.accepted,
            "accepted_unrolls_by_actor": counters.by_actor(),
            "refused_actors": self.validator.refused,
            "broken_streams": counters.broken_streams,
            "unauthenticated_calls": counters.unauthenticated,
            "idle_calls_closed": counters.idle_closed,
            "refused_calls": counters.refused_calls,
            # The observation bytes a batch's unrolls brought per frame (stacked frames each
            # once: about a quarter of whole stacks on Atari, in both inference modes).
            "observation_bytes_per_frame": (self.batcher.observation_bytes / self._local_frames
                                            if self.batcher is not None else None),
        }

    def close(self) -> None:
        self.stopping.set()
        if self.central is not None:
            self.central.stop()
        if self.batcher is not None:
            self.batcher.stop()
        if self.server is not None:
            self.server.stop(grace=0.5)
