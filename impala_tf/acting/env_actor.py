"""An actor for central inference: it steps its environments, and the learner acts
(`python -m impala_tf.acting.process --inference=central` runs one). Its process never imports
TensorFlow: it holds K environments, sends each step over one stream
(`/impala.Learner/Act`, `rpc.step_messages`, each frame once) and applies the actions that
come back. The learner says how many environments to run and how to seed them, so an
actor's environments are those of an actor that acts itself (`Actor.num_envs`,
`Actor.seed`). When the learner goes away the actor keeps its environments and reconnects
with backoff (a new stream restarts the learner's state of them); SIGTERM / SIGINT end it.
"""

import queue
import threading
from typing import Optional

import gin
import grpc
from impala_tf.envs.factory import make_environment
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.client import RETRYABLE_CODES, Reconnect, call_metadata, channel_options
from impala_tf.rpc.security import Security
from impala_tf.rpc.protocol import ACT

# Ends of a stream worth another: the learner is not there (yet), is stopping or busy
# (RESOURCE_EXHAUSTED), closed an idle stream (DEADLINE_EXCEEDED), still holds this
# actor's previous stream (a restart within gRPC's detection of the old one), or let a new
# hello for this id replace this stream's session while it was silent (ABORTED).
_RETRY = RETRYABLE_CODES | {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.CANCELLED,
                            grpc.StatusCode.ABORTED}


class _End:
    pass


@gin.configurable
class EnvActor:
    """Steps K environments for the learner's central inference.

    Args:
      learner_address: `host:port` of the learner.
      actor_index: this actor's number (its id at the learner; seeds; levels).
      max_message_bytes: the largest message sent or received.
      reconnect_backoff_seconds, max_reconnect_backoff_seconds: the delays between tries
        while the learner is unreachable (doubling from the first to the second).
      reconnect_timeout_seconds: give up (`LearnerUnreachableError`) after this long without a
        learner; None waits for ever.
    """

    def __init__(self, learner_address: str, actor_index: int = 0,
                 max_message_bytes: int = 64 << 20, reconnect_backoff_seconds: float = 0.5,
                 max_reconnect_backoff_seconds: float = 10.0,
                 reconnect_timeout_seconds: Optional[float] = None,
                 security: Optional[Security] = None):
        self.address = learner_address
        self.actor_index = int(actor_index)
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self._backoff = (reconnect_backoff_seconds, max_reconnect_backoff_seconds)
        security = security or Security()
        self._channel = security.channel(
            learner_address, channel_options(max_message_bytes, max_reconnect_backoff_seconds))
        self._metadata = call_metadata(security, self.actor_index)
        self._act = self._channel.stream_stream(ACT)
        self.env = None
        self._timestep = None
        self._encoder: Optional[step_messages.StepEncoder] = None
        self.agent_steps = 0  # steps of all K environments together
        self.streams = 0

    def run(self, stop_event: Optional[threading.Event] = None,
            max_steps: Optional[int] = None) -> None:
        """Acts until `stop_event` is set or `max_steps` agent steps were taken."""
        stop_event = stop_event or threading.Event()
        reconnect = Reconnect(*self._backoff, timeout=self.reconnect_timeout_seconds)
        while not stop_event.is_set():
            if max_steps is not None and self.agent_steps >= max_steps:
                return
            try:
                self._stream(stop_event, max_steps, reconnect)
                return
            except grpc.RpcError as error:
                if error.code() not in _RETRY:
                    raise RuntimeError(f"actor {self.actor_index}: the learner at "
                                       f"{self.address} ended the stream: "
                                       f"{error.code().name}: {error.details()}") from None
                reconnect.failed(f"actor {self.actor_index}: learner {self.address}: "
                                 f"{error.code().name} ({error.details()})", stop_event)

    def _stream(self, stop_event: threading.Event, max_steps: Optional[int],
                reconnect: Reconnect) -> None:
        """One stream: hello, then steps until stopped (the learner's answer to the hello
        counts as `reconnect`'s answer)."""
        outbox: "queue.Queue" = queue.Queue()

        def requests():
            while True:
                item = outbox.get()
                if item is _End:
                    return
                yield item

        responses = self._act(requests(), metadata=self._metadata, wait_for_ready=True)
        try:
            outbox.put(step_messages.encode_hello(self.actor_index))
            settings = step_messages.decode_settings(next(responses))
            reconnect.answered()
            self.streams += 1
            if self.env is None:
                self.env = make_environment(
                    settings["num_envs"], seed=settings["seed"],
                    actor_index=self.actor_index)
                self._encoder = step_messages.StepEncoder(self.env.stacked_observations)
                self._timestep = self.env.reset()
            elif self.env.num_envs != settings["num_envs"]:
                raise RuntimeError(f"the learner now asks for {settings['num_envs']} "
                                   f"environments, not {self.env.num_envs}")
            self._encoder.reset()
            episodes = []
            k = self.env.num_envs
            while not stop_event.is_set():
                if max_steps is not None and self.agent_steps >= max_steps:
                    break
                outbox.put(self._encoder.encode(self._timestep, episodes))
                actions = step_messages.decode_actions(next(responses), k,
                                                       settings["num_actions"])
                self._timestep = self.env.step(actions)
                episodes = self.env.pop_finished_episodes()
                self.agent_steps += 1
        except StopIteration:
            raise RuntimeError("the learner ended the stream without a status") from None
        except codec.CodecError as error:
            raise RuntimeError(f"the learner's answer is malformed: {error}") from None
        finally:
            outbox.put(_End)
            responses.cancel()

    def close(self) -> None:
        self._channel.close()
        if self.env is not None:
            self.env.close()
