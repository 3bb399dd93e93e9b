"""Central inference (SEED RL's design): the learner acts for every actor.

With `Launcher.inference = 'central'` the actor processes (`impala_tf.acting.env_actor`) only step
their environments: each sends its K environments' timestep over one stream
(`/impala.Learner/Act`, `rpc.step_messages`) and waits for their actions. Here, in the
learner process:

- a thread gathers the waiting actors' steps (it runs as soon as every connected actor has
  one waiting, or `max_wait_ms` after the first, or at `max_batch_envs` environments),
  runs one compiled agent step for all of them on the learner's device
  (`inference_step.InferenceStep`: the first core of the strategy, XLA-compiled on a TPU;
  batch padded to K times a power of two, so it compiles a few shapes only), whose core
  states stay on the device, and sends each actor its actions;
- it keeps each environment's previous action and logits, and assembles the
  unrolls exactly as an actor does (`unroll_builder.UnrollBuilder`: T+1 steps, step 0 the previous
  unroll's last, the core state before step 0, the behaviour logits of the parameters that
  acted; stacked frames each once, `frames.PackedStack`, where the step messages said the
  stacks restart), and puts them in the learner's queue. A full queue holds this thread, and with it
  every actor: the learner's back-pressure.

The agent's variables are the learner's own: no parameters are broadcast, and an unroll's
steps may come from successive updates (its version is the learner step at its start; V-trace
corrects for the rest). An actor whose stream ends (a crash, a cut link, a malformed step)
loses its unfinished unrolls; when it comes back it starts with a fresh core state.
"""

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from impala_tf import seeding
from impala_tf.envs.base import BatchedTimeStep, EpisodeStats
from impala_tf.queues import put_unless_stopped
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.step_messages import SessionRefused
from impala_tf.rpc.validation import UnrollLimits, meta_int
from impala_tf.unroll import Unroll
from impala_tf.acting.unroll_builder import UnrollBuilder
from impala_tf.learning.inference_step import InferenceStep


class _Session:
    """One actor's stream: its decoder and its environments' state between steps."""

    def __init__(self, actor_id: int, decoder: step_messages.StepDecoder, num_envs: int,
                 num_actions: int):
        self.actor_id = actor_id
        self.decoder = decoder
        # Its environments' rows in the inference step's core-state table; fresh until its
        # first step has acted (a new session starts from the initial core state).
        self.rows = np.arange(actor_id * num_envs, (actor_id + 1) * num_envs, dtype=np.int32)
        self.fresh = True
        self.prev_actions = np.zeros(num_envs, np.int32)
        self.prev_logits = np.zeros([num_envs, num_actions], np.float32)
        self.builder: Optional[UnrollBuilder] = None
        self.initial_state: Any = None  # core state before the current unroll's step 0
        self.version = 0  # learner step when the current unroll started
        self.episodes: List[EpisodeStats] = []
        self.closed = False
        self.read_timer: Optional[asyncio.Timeout] = None  # its stream's wait for a message
        self.last_heard = time.monotonic()  # when its last message came
        self.in_flight = False  # a step waits for its actions
        self.late = False  # missed a batch that waited for it (inference thread's)

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def silent_for(self, now: float) -> float:
        """Seconds since its last message, 0 while a step of it waits for actions."""
        return 0.0 if self.in_flight else now - self.last_heard


class _Request(NamedTuple):
    session: _Session
    timestep: BatchedTimeStep
    restarts: Dict[str, np.ndarray]  # stacked observation -> [K] bool (`StepDecoder`)
    episodes: List[EpisodeStats]
    loop: asyncio.AbstractEventLoop  # the stream's event loop
    resolve: Callable[[Any], None]  # on `loop`: with the actions, or an exception

    def reply(self, result: Any) -> None:
        """Hands this request its result (one wake-up of its loop)."""
        self.loop.call_soon_threadsafe(self.resolve, result)


def _reply_all(requests: List[_Request], results: List[Any]) -> None:
    """Hands a batch its results, waking each event loop once rather than once per actor
    (a wake-up writes to the loop's self-pipe)."""
    by_loop: Dict[asyncio.AbstractEventLoop, List[Tuple[Callable, Any]]] = {}
    for request, result in zip(requests, results):
        by_loop.setdefault(request.loop, []).append((request.resolve, result))
    for loop, replies in by_loop.items():
        loop.call_soon_threadsafe(_resolve_each, replies)


def _resolve_each(replies: List[Tuple[Callable, Any]]) -> None:
    for resolve, result in replies:
        resolve(result)


@gin.configurable
class CentralInference:
    """Batched inference and unroll assembly for environment actors (module docstring).

    Args:
      agent: the learner's agent.
      unrolls: the learner's unroll queue.
      counters: the service's `ServiceCounters` (accepted unrolls, episodes).
      observation_spec: observation name -> (numpy dtype, one environment's shape).
      num_actions: the action set's size.
      num_envs: K environments per actor (`Actor.num_envs`).
      unroll_length: T.
      num_actors: actor ids accepted are [0, num_actors).
      is_refused: whether an actor's unrolls are refused (non-finite updates traced to it).
      version: the learner step now (an unroll's policy version).
      env_seed: actor i's environments are seeded as those of actors that act themselves:
        `env_seed + 1000 * i + j` when it says hello at step 0, mixed with the step after
        (`seeding.actor_seed`: a resumed run does not replay step 0's episodes).
      stacked_observations, observation_bounds, limits, max_message_bytes: for the step
        messages' checks (`step_messages.StepDecoder`).
      policy_seed: seeds the action sampling (None: a fresh draw).
      policy_rng: the action sampling's `tf.random.Generator` (instead of `policy_seed`;
        the learner checkpoints it).
      greedy: act with the most probable action instead of sampling (tests).
      strategy: the learner's: the step runs on its first local device (a TPU core).
      jit_compile: XLA-compile the step (the endpoint passes the learner's setting; always
        under a TPU).
      max_wait_ms: how long the first waiting step waits for others to join its batch. An
        actor whose step did not come within it is late: later batches do not wait for it
        until it steps again, so a silent actor delays the others by one `max_wait_ms` once.
      max_batch_envs: the most environments in one inference call (None: every actor's).
      replace_silent_after_seconds: a hello for an actor id whose session has sent nothing
        for this long (and has no step waiting) replaces that session (its stream is
        ended): a restarted actor need not wait for gRPC to notice its old stream, and a
        squatter's silent session gives way. None: 100 `max_wait_ms`, at least 1 s.
    """

    def __init__(self, agent, unrolls: "queue.Queue[Unroll]", counters,
                 observation_spec: Mapping[str, Tuple[Any, tuple]], num_actions: int,
                 num_envs: int, unroll_length: int, num_actors: int,
                 is_refused: Callable[[int], bool], version: Callable[[], int],
                 env_seed: int = 0, stacked_observations: Optional[Mapping[str, int]] = None,
                 observation_bounds=None, limits: Optional[UnrollLimits] = None,
                 max_message_bytes: Optional[int] = None, policy_seed: Optional[int] = None,
                 greedy: bool = False, max_wait_ms: float = 5.0,
                 max_batch_envs: Optional[int] = None,
                 replace_silent_after_seconds: Optional[float] = None,
                 policy_rng: Optional[tf.random.Generator] = None,
                 strategy: Optional[tf.distribute.Strategy] = None, jit_compile: bool = False):
        self.agent = agent
        self.num_envs, self.num_actions = int(num_envs), int(num_actions)
        self.unroll_length = int(unroll_length)
        self.num_actors = int(num_actors)
        self.step = InferenceStep(agent, self.num_actors * self.num_envs, strategy,
                                  greedy=greedy, rng=policy_rng, seed=policy_seed,
                                  jit_compile=jit_compile)
        self.env_seed = int(env_seed)
        self.max_wait_seconds = max(0.0, float(max_wait_ms)) / 1000.0
        self.replace_silent_after_seconds = float(
            replace_silent_after_seconds if replace_silent_after_seconds is not None
            else max(1.0, 100 * self.max_wait_seconds))
        self.replaced = 0  # silent sessions replaced by a new hello
        self.max_batch_envs = int(max_batch_envs or self.num_envs * self.num_actors)
        if self.max_batch_envs < self.num_envs:
            raise ValueError(f"CentralInference.max_batch_envs = {max_batch_envs} is below "
                             f"one actor's {self.num_envs} environments.")
        self._unrolls, self._counters = unrolls, counters
        self._is_refused, self._version = is_refused, version
        self.stacked = dict(stacked_observations or {})
        self._decoder_args = (dict(observation_spec), self.num_envs, self.stacked,
                              limits or UnrollLimits(), observation_bounds, max_message_bytes)
        self._max_message_bytes = max_message_bytes
        self._sessions: Dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._requests: "queue.Queue[_Request]" = queue.Queue()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.calls = 0  # inference calls made
        self.waited_out = 0  # batches that waited the whole max_wait_ms for a late actor

    # -- the stream's side (the server's event loop) -------------------------------------------
    def settings(self, actor_id: int) -> bytes:
        """The answer to actor `actor_id`'s hello: its environments and their base seed."""
        seed = seeding.actor_seed(self.env_seed, actor_id, self._version())
        return step_messages.encode_settings(self.num_envs, seed, self.num_actions)

    def open(self, hello: bytes, claimed: Optional[int] = None) -> _Session:
        """A session for the actor that sent `hello` (on a call whose metadata `claimed` an
        actor id, if any), on the server's event loop; `codec.CodecError` if it is malformed,
        `SessionRefused` if that actor may not act now. A silent session of the same id is
        replaced (`replace_silent_after_seconds`), its stream ended."""
        _, meta = codec.decode(hello, step_messages.HELLO_MAGIC, self._max_message_bytes)
        actor_id = meta_int(meta.get("actor_id"), "actor_id", 0, self.num_actors)
        if claimed is not None and actor_id != claimed:
            raise codec.CodecError(f"a hello for actor {actor_id} on a call opened as actor "
                                   f"{claimed}")
        if self._is_refused(actor_id):
            raise SessionRefused("PERMISSION_DENIED", f"actor {actor_id} is refused: its "
                                 "unrolls made non-finite updates")
        session = _Session(actor_id, step_messages.StepDecoder(*self._decoder_args),
                           self.num_envs, self.num_actions)
        with self._lock:
            old = self._sessions.get(actor_id)
            if old is not None:
                silent = old.silent_for(time.monotonic())
                if silent < self.replace_silent_after_seconds:
                    raise SessionRefused("ALREADY_EXISTS", f"actor {actor_id} is already "
                                         "acting on another stream")
                old.closed = True
                self.replaced += 1
                logging.warning("actor %d: a new hello replaces its session, silent for "
                                "%.1f s", actor_id, silent)
            self._sessions[actor_id] = session
        if old is not None and old.read_timer is not None:  # its wait for a message ends now
            old.read_timer.reschedule(asyncio.get_running_loop().time())
        return session

    def close(self, session: _Session) -> None:
        """The stream ended: its environments' state and unfinished unrolls go."""
        session.closed = True
        with self._lock:
            if self._sessions.get(session.actor_id) is session:
                del self._sessions[session.actor_id]

    async def act(self, session: _Session, timestep: BatchedTimeStep,
                  episodes: List[EpisodeStats]) -> np.ndarray:
        """The actions for `timestep` (the one `session.decoder` decoded last), once its
        batch has run."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(result):
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        session.in_flight = True
        try:
            self._requests.put(_Request(session, timestep, session.decoder.restarts, episodes,
                                        loop, resolve))
            return await future
        finally:
            session.in_flight = False
            session.heard()

    # -- the inference thread ------------------------------------------------------------------
    def start(self) -> "CentralInference":
        self._thread = threading.Thread(target=self._run, name="central-inference", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        while True:  # whoever still waits is told
            try:
                self._requests.get_nowait().reply(RuntimeError("the learner is stopping"))
            except queue.Empty:
                return

    def _expected_sessions(self) -> int:
        """Open sessions a batch waits for: all but the late ones."""
        with self._lock:
            return sum(not s.late for s in self._sessions.values())

    def _mark_late(self, batch: List[_Request]) -> None:
        """The open sessions that missed `batch` are late (see `max_wait_ms`)."""
        present = {id(r.session) for r in batch}
        with self._lock:
            for session in self._sessions.values():
                if id(session) not in present:
                    session.late = True

    def _next_batch(self) -> List[_Request]:
        try:
            batch = [self._requests.get(timeout=0.1)]
        except queue.Empty:
            return []
        batch[0].session.late = False
        deadline = time.monotonic() + self.max_wait_seconds
        while (len(batch) < self._expected_sessions()
               and (len(batch) + 1) * self.num_envs <= self.max_batch_envs):
            left = deadline - time.monotonic()
            try:
                request = (self._requests.get(timeout=left) if left > 0
                           else self._requests.get_nowait())
            except queue.Empty:
                self.waited_out += 1
                self._mark_late(batch)
                break
            request.session.late = False
            batch.append(request)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._serve(batch)
            except Exception as error:  # noqa: BLE001 (every waiting actor must hear of it)
                logging.exception("central inference failed")
                for request in batch:
                    request.reply(error)

    def _serve(self, batch: List[_Request]) -> None:
        """One inference call for the batch's actors, after recording their steps."""
        version = self._version()
        live, starting = [], []
        for request in batch:
            if request.session.closed:
                request.reply(RuntimeError("the stream ended"))
            elif self._is_refused(request.session.actor_id):
                request.reply(SessionRefused("PERMISSION_DENIED", f"actor "
                                             f"{request.session.actor_id} is refused"))
            else:
                if self._record(request, version):
                    starting.append(request.session)
                live.append(request)
        if not live:
            return
        sessions = [r.session for r in live]
        if starting:  # their new unrolls' initial core state: one read of their rows
            states = self.step.read_rows(
                np.concatenate([s.rows for s in starting]),
                np.repeat([s.fresh for s in starting], self.num_envs))
            for i, session in enumerate(starting):
                rows = slice(i * self.num_envs, (i + 1) * self.num_envs)
                session.initial_state = tf.nest.map_structure(lambda leaf: leaf[rows], states)
        n = len(live) * self.num_envs
        size = self.num_envs
        while size < n:
            size *= 2

        def padded(arrays, fill=0):
            joined = np.concatenate(arrays)
            if size == n:
                return joined
            return np.concatenate([joined, np.full((size - n,) + joined.shape[1:], fill,
                                                   joined.dtype)])

        timesteps = [r.timestep for r in live]
        timestep = BatchedTimeStep(
            padded([t.step_type for t in timesteps]), padded([t.reward for t in timesteps]),
            padded([t.discount for t in timesteps]),
            {name: padded([t.observation[name] for t in timesteps])
             for name in timesteps[0].observation})
        actions, logits = self.step(
            padded([s.prev_actions for s in sessions]), timestep.reward, timestep.first(),
            timestep.observation, padded([s.rows for s in sessions], self.step.padding_row),
            padded([np.repeat(s.fresh, self.num_envs) for s in sessions], True))
        self.calls += 1
        for i, request in enumerate(live):
            rows = slice(i * self.num_envs, (i + 1) * self.num_envs)
            session = request.session
            session.prev_actions = actions[rows]
            session.prev_logits = logits[rows]
            session.fresh = False
        _reply_all(live, [r.session.prev_actions for r in live])

    def _record(self, request: _Request, version: int) -> bool:
        """Adds the request's step to its actor's unrolls as `Actor.act` does: it ends the
        current unroll (which then goes to the queue) and starts the next. Whether an unroll
        starts (its initial core state is then read before the step acts)."""
        session, timestep = request.session, request.timestep
        session.episodes.extend(request.episodes)
        if session.builder is None:
            session.builder = UnrollBuilder(self.num_envs, self.unroll_length, self.num_actions,
                                            self.stacked)
        else:
            session.builder.append(timestep, session.prev_actions, session.prev_logits,
                                   request.restarts)
            if not session.builder.full:
                return False
            self._emit(session)
        session.builder.start(timestep, session.prev_actions, session.prev_logits)
        session.version = version
        return True

    def _emit(self, session: _Session) -> None:
        episodes, session.episodes = session.episodes, []
        unrolls = session.builder.unrolls(session.initial_state, session.version,
                                          session.actor_id)
        for i, unroll in enumerate(unrolls):
            if not put_unless_stopped(self._unrolls, unroll, self._stop.is_set):
                return
            self._counters.accept(episodes if i == 0 else [], session.actor_id)
