"""An actor for central inference: it steps its environments, and the learner acts.

    python -m impala_tf.acting.env_actor --learner_address=HOST:PORT --actor_index=3 --gin_file=F

(`Launcher.inference = 'central'` starts these itself.) The process never imports
TensorFlow: it holds K environments, sends each step over one stream
(`/impala.Learner/Act`, `rpc.step_messages`, each frame once) and applies the actions that
come back. The learner says how many environments to run and how to seed them, so an
actor's environments are those of an actor that acts itself (`Actor.num_envs`,
`Actor.seed`). When the learner goes away the actor keeps its environments and reconnects
with backoff (a new stream restarts the learner's state of them); SIGTERM / SIGINT end it.
"""

import logging
import os
import queue
import signal
import threading
import time
from typing import Optional

import gin
import grpc
from absl import app, flags

from impala_tf import command_line, quiet
from impala_tf.envs.factory import make_environment
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.client import RETRYABLE_CODES, Backoff, call_metadata, channel_options
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
      reconnect_timeout_seconds: give up (`RuntimeError`) after this long without a
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
        backoff = Backoff(*self._backoff)
        down_since = None
        while not stop_event.is_set():
            if max_steps is not None and self.agent_steps >= max_steps:
                return
            try:
                self._stream(stop_event, max_steps)
                return
            except grpc.RpcError as error:
                if error.code() not in _RETRY:
                    raise RuntimeError(f"actor {self.actor_index}: the learner at "
                                       f"{self.address} ended the stream: "
                                       f"{error.code().name}: {error.details()}") from None
                now = time.monotonic()
                down_since = down_since or now
                if (self.reconnect_timeout_seconds is not None
                        and now - down_since > self.reconnect_timeout_seconds):
                    raise RuntimeError(f"the learner at {self.address} has not answered for "
                                       f"{now - down_since:.0f} s ({error.code().name})") from None
                delay = backoff.next()
                logging.warning("actor %d: learner %s: %s (%s); retrying in %.1f s",
                                self.actor_index, self.address, error.code().name,
                                error.details(), delay)
                stop_event.wait(delay)

    def _stream(self, stop_event: threading.Event, max_steps: Optional[int]) -> None:
        """One stream: hello, then steps until stopped."""
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


FLAGS = flags.FLAGS


def define_actor_flags() -> None:
    """The flags of both kinds of actor process (this one and `impala_tf.acting.actor`)."""
    quiet.define_verbose_flag()
    flags.DEFINE_string("learner_address", None, "host:port of the learner.")
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_integer("actor_index", 0, "This actor's number.")
    flags.DEFINE_integer("parent_pid", None, "Stop when this process is no longer our parent "
                         "(set by the local launcher, so its actors die with it).")


def define_flags() -> None:
    define_actor_flags()
    flags.DEFINE_integer("max_steps", None, "Stop after this many agent steps.")


def stop_when_orphaned(parent_pid: int, stop: threading.Event, poll_seconds: float = 1.0):
    """Sets `stop` once `parent_pid` is no longer this process's parent (it died)."""
    def watch():
        while not stop.wait(poll_seconds):
            if os.getppid() != parent_pid:
                logging.warning("parent process %d is gone; stopping", parent_pid)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_env_actor_process(learner_address: str, actor_index: int,
                          max_steps: Optional[int] = None,
                          parent_pid: Optional[int] = None) -> None:
    """The body of an environment actor process (gin already parsed)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if parent_pid is not None:
        stop_when_orphaned(parent_pid, stop)
    actor = EnvActor(learner_address, actor_index=actor_index)
    try:
        actor.run(stop, max_steps=max_steps)
    finally:
        actor.close()


def main(argv) -> None:
    del argv
    if not FLAGS.learner_address:
        raise app.UsageError("--learner_address=HOST:PORT is required.")
    from impala_tf import config  # the wiring's registry: commands only
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings, lean=True)
    logging.info("environment actor %d connecting to %s", FLAGS.actor_index,
                 FLAGS.learner_address)
    run_env_actor_process(FLAGS.learner_address, FLAGS.actor_index, FLAGS.max_steps,
                          FLAGS.parent_pid)


if __name__ == "__main__":
    command_line.run(main, __doc__, define_flags, "impala_tf.acting.env_actor")
