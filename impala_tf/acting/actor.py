"""The actor: K environments, batched inference with its own (lagging) copy of the policy,
unrolls of T steps per environment streamed to the learner.

    python -m impala_tf.acting.process --learner_address=HOST:PORT --gin_file=atari/experts_shallow.gin

Each unroll holds T+1 steps (step 0 repeats the previous unroll's last), the core state
before step 0 and the version of the parameters that acted (layout in `specs.py`). The
core state carries across unrolls and resets at episode starts (inside the agent).
Parameters are refreshed from the learner before every `refresh_every_unrolls`-th unroll.
Finished episodes ride along with the next unroll to the learner.

When the learner goes away (a crash, a restart, a cut link) the actor keeps its environments
and core state, and retries with backoff until the learner answers again: unrolls wait in the
client's bounded outbox, parameter pulls are retried, and a restarted learner's parameters
are loaded even if their version is older (see `rpc.parameter_store.ParameterStore`). SIGTERM / SIGINT end
it promptly, whatever it is waiting for.
"""

import logging
import threading
from typing import List, Optional, Union

import gin
import grpc
import numpy as np
import tensorflow as tf

import impala_tf  # noqa: F401  (sets the Keras backend)
from impala_tf import gin_utils, seeding
from impala_tf.networks import build_agent
from impala_tf.envs.factory import make_environment
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.rpc import codec, frame_packing
from impala_tf.rpc.client import RETRYABLE_CODES, LearnerClient, Reconnect
from impala_tf.rpc.validation import encode_episodes
from impala_tf.run_config import RunConfig
from impala_tf.specs import num_tasks, tensor_specs
from impala_tf.acting.unroll_builder import UnrollBuilder


@gin.configurable(denylist=["learner_step"])
class Actor:
    """Runs K environments and streams their unrolls to the learner.

    Args:
      learner_address: `host:port` of the learner's gRPC server.
      actor_index: this actor's number (seeds; DMLab-30 level assignment).
      num_envs: K environments stepped together, one batched inference per step.
      seed: base seed; environment seeds are `seed + 1000 * actor_index + i` in a fresh
        run (`seeding.actor_seed`).
      refresh_every_unrolls: pull newer parameters before every N-th unroll (1: each).
      max_message_bytes: the largest message sent or received.
      rpc_timeout_seconds: how long one parameter pull waits for an unreachable learner.
      reconnect_backoff_seconds, max_reconnect_backoff_seconds: the delays between retries
        while the learner is unreachable (doubling from the first to the second).
      reconnect_timeout_seconds: give up (`LearnerUnreachableError`) after the learner has
        been unreachable this long; None waits for ever (remote actors of a long run).
      pack_stacked_frames: send stacked observations packed, each frame once
        (`rpc.frame_packing`: a quarter of the bytes, and less learner CPU per frame), or
        whole stacks; the learner takes both.
      learner_step: the run's step when this actor started (the launcher passes it): past
        step 0 the seeds mix it in, so a resumed run or a restarted actor does not replay
        the episodes of step 0 (`seeding.actor_seed`). Not a gin setting.
    """

    def __init__(self, learner_address: str, actor_index: int = 0, num_envs: int = 8,
                 seed: int = 0, refresh_every_unrolls: int = 1,
                 max_message_bytes: int = 64 << 20, rpc_timeout_seconds: float = 10.0,
                 reconnect_backoff_seconds: float = 0.5,
                 max_reconnect_backoff_seconds: float = 10.0,
                 reconnect_timeout_seconds: Optional[float] = None,
                 pack_stacked_frames: bool = True,
                 run_config: Optional[RunConfig] = None, learner_step: int = 0):
        self.actor_index = int(actor_index)
        self.run_config = run_config or RunConfig()
        self.refresh_every_unrolls = max(1, int(refresh_every_unrolls))
        self.rpc_timeout_seconds = float(rpc_timeout_seconds)
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self.pack_stacked_frames = bool(pack_stacked_frames)
        self._backoff = (reconnect_backoff_seconds, max_reconnect_backoff_seconds)
        base_seed = seeding.actor_seed(seed, self.actor_index, learner_step)
        self.env = make_environment(num_envs, seed=base_seed, actor_index=self.actor_index)
        self.num_actions = self.env.action_spec().num_values
        self.agent = build_agent(tensor_specs(self.env.observation_spec()),
                                          self.num_actions,
                                          num_tasks(self.env.observation_spec()))
        self.policy = BatchedPolicy(self.agent, seed=base_seed)
        self.client = LearnerClient(learner_address, max_message_bytes,
                                    backoff_seconds=reconnect_backoff_seconds,
                                    max_backoff_seconds=max_reconnect_backoff_seconds,
                                    actor_id=self.actor_index)
        self.policy_version = -1
        self.incarnation = 0  # of the learner whose parameters we hold (0: none yet)
        self.reconnects = 0
        self.unrolls_sent = 0
        self.steps_taken = 0
        self._variables = list(self.agent.variables)
        self._builder: Optional[UnrollBuilder] = None  # `act`'s state between calls

    def refresh_parameters(self, stop_event: Optional[threading.Event] = None) -> bool:
        """Loads the learner's newest parameters if they are newer than ours (True if so).

        While the learner is unreachable, retries with backoff until it answers, `stop_event`
        is set (False) or `reconnect_timeout_seconds` have passed (`LearnerUnreachableError`).
        """
        stop_event = stop_event or threading.Event()
        reconnect = Reconnect(*self._backoff, timeout=self.reconnect_timeout_seconds)
        while not stop_event.is_set():
            try:
                newer = self.client.get_parameters(
                    self.policy_version, self.incarnation, timeout=self.rpc_timeout_seconds,
                    stop_event=stop_event)
                break
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE_CODES:
                    raise
                why = error.code().name
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # The waiting call hides the cause (a learner not up yet looks like a TLS
                    # handshake our CA refuses); a fail-fast call names it.
                    cause = self.client.connection_error(
                        self.policy_version, self.incarnation,
                        timeout=min(5.0, self.rpc_timeout_seconds))
                    why += f"; {cause}" if cause else ""
                reconnect.failed(f"actor {self.actor_index}: learner {self.client.address} "
                                 f"unreachable ({why})", stop_event)
        else:
            return False
        if stop_event.is_set():  # the pull was interrupted, not answered
            return False
        down = reconnect.answered()
        if down is not None:
            self.reconnects += 1
            logging.warning("actor %d: learner %s answers again after %.0f s",
                            self.actor_index, self.client.address, down)
        if newer is None:
            return False
        # Matched by position: Keras makes layer names unique per process, so the learner's
        # variable paths may carry other suffixes than ours; the shapes must agree.
        values = list(newer.fields.values())
        shapes_match = len(values) == len(self._variables) and all(
            tuple(v.shape) == tuple(w.shape) for v, w in zip(values, self._variables))
        if not shapes_match:
            raise RuntimeError("The learner's parameters do not match this actor's agent: "
                               "are both running the same gin config?")
        for variable, value in zip(self._variables, values):
            variable.assign(value)
        if newer.incarnation != self.incarnation and self.incarnation:
            logging.warning("actor %d: the learner was restarted; now at its step %d",
                            self.actor_index, newer.version)
        self.policy_version, self.incarnation = newer.version, newer.incarnation
        return True

    def act(self) -> List[Union[bytes, frame_packing.StreamedUnroll]]:
        """Steps the K environments for one unroll (T steps, batched inference each step) and
        returns the K encoded unroll messages (packed stacked frames: `StreamedUnroll`s, whole
        and continued). The environments, core state and last step
        carry over to the next call."""
        k = self.env.num_envs
        if self._builder is None:  # first call: start the episodes
            self._builder = UnrollBuilder(k, self.run_config.unroll_length, self.num_actions,
                                          self.env.stacked_observations)
            self._timestep = self.env.reset()
            self._state = self.policy.initial_state(k)
            self._prev_actions = np.zeros(k, np.int32)
            self._prev_logits = np.zeros([k, self.num_actions], np.float32)
        builder, version, initial_state = self._builder, self.policy_version, self._state
        builder.start(self._timestep, self._prev_actions, self._prev_logits)
        while not builder.full:
            step, self._state = self.policy(self._prev_actions, self._timestep, self._state)
            self._timestep = self.env.step(step.actions)
            builder.append(self._timestep, step.actions, step.policy_logits)
            self._prev_actions, self._prev_logits = step.actions, step.policy_logits
            self.steps_taken += k
        episodes = encode_episodes(self.env.pop_finished_episodes())
        metas = [{"policy_version": max(version, 0), "actor_id": self.actor_index,
                  "episodes": episodes if i == 0 else []} for i in range(k)]
        unrolls = builder.unrolls(initial_state, max(version, 0), self.actor_index)
        if not (self.pack_stacked_frames and self.env.stacked_observations):
            return [codec.encode(codec.UNROLL_MAGIC, frame_packing.unpacked(u.flat()), meta)
                    for u, meta in zip(unrolls, metas)]
        return [frame_packing.encode_streamed(u.flat(), self.env.stacked_observations, meta, i)
                for i, (u, meta) in enumerate(zip(unrolls, metas))]

    def run(self, stop_event: Optional[threading.Event] = None,
            max_unrolls: Optional[int] = None) -> None:
        """Acts until `stop_event` is set or `max_unrolls` rounds of K unrolls were sent."""
        stop_event = stop_event or threading.Event()
        self.refresh_parameters(stop_event)
        rounds = 0
        while not stop_event.is_set() and (max_unrolls is None or rounds < max_unrolls):
            if rounds % self.refresh_every_unrolls == 0 and rounds > 0:
                self.refresh_parameters(stop_event)
            if stop_event.is_set():
                break
            for message in self.act():
                if not self.client.send_unroll(message, stop_event):
                    return
                self.unrolls_sent += 1
            rounds += 1

    def close(self, flush: bool = True) -> None:
        """Closes the connection (after sending what is queued, with `flush`) and the envs."""
        self.client.close(flush=flush)
        self.env.close()


def configured_num_envs() -> int:
    """`Actor.num_envs` as the parsed gin config sets it, else its default."""
    return int(gin_utils.configured_value(Actor, "num_envs"))


def configured_actor_seed() -> int:
    """`Actor.seed` as the parsed gin config sets it, else its default."""
    return int(gin_utils.configured_value(Actor, "seed"))


@gin.configurable
def configure_actor_threads(inter_op_threads: int = 1, intra_op_threads: int = 0) -> None:
    """TensorFlow's thread pools in an actor process (0: TensorFlow's choice, one thread per
    core). An actor runs one small op graph at a time, and shares the machine's cores with
    the other actors and the learner."""
    tf.config.threading.set_inter_op_parallelism_threads(int(inter_op_threads))
    tf.config.threading.set_intra_op_parallelism_threads(int(intra_op_threads))
