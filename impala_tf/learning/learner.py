"""The learner: a `tf.distribute` strategy, the train step over batches from the actors,
parameters published with a version, checkpoints, TensorBoard summaries and metrics.jsonl.

One `Learner` per process (per worker in a multi-worker cluster). It owns the gRPC server
its actors stream to; `run()` trains until the run's frame budget is spent or `stop()`.
"""

import logging
import os
import queue
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import gin
import keras
import numpy as np
import tensorflow as tf

from impala_tf import distribute, gin_utils
from impala_tf.acting.policy import sampling_generator
from impala_tf.learning import checkpoints
from impala_tf.learning.batcher import Batcher, ReadyBatch, minibatches, split_for_replicas
from impala_tf.learning.central_inference import CentralInference
from impala_tf.learning.faults import (LOST_WORKER_ERRORS, DiskFullError, NonFiniteUpdatesError,
                                       WorkerLostError, is_disk_full)
from impala_tf.learning.logdir_lock import LogdirLock
from impala_tf.learning.metrics import MetricsLog, MetricsWindow, SinkErrors
from impala_tf.learning.placement import frames_on_device, xla_plan
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.rpc import codec, step_messages
from impala_tf.rpc.server import (METHODS, LearnerServer, LearnerService, ParameterStore,
                                  UnrollQueue)
from impala_tf.rpc.validation import Unroll, UnrollLimits, UnrollValidator
from impala_tf.run_config import RunConfig
from impala_tf.specs import num_tasks, unroll_wire_spec

# Stats summed over replicas (the loss terms when the loss is a sum); the rest are averaged.
_SUMMED_STATS = ("total_loss", "pg_loss", "baseline_loss", "entropy_loss")
DECISIONS = "decisions"  # the step's stats entry: [stop, checkpoint], summed over workers


def parameter_fields(agent) -> Dict[str, np.ndarray]:
    """The agent's variables by path, in the agent's fixed order (actors load them by
    position, checking shapes)."""
    return {v.path: np.asarray(v.numpy()) for v in agent.variables}


@gin.configurable(denylist=["actor_seed"])
class Learner:
    """Trains the agent on unrolls streamed by actors.

    Args:
      observation_spec, num_actions: the environment's (tf.TensorSpec per observation).
      logdir: checkpoints, summaries, metrics.jsonl and the operative config go here.
      strategy: a `tf.distribute.Strategy` (see `distribute.make_strategy`).
      run_config: unroll length, batch size, frame budget.
      server_address: where the gRPC server listens (port 0: any free port).
      queue_capacity: unrolls held between the service and the batcher (bounds memory and,
        when the learner is the bottleneck, the policy lag); default: one of this worker's
        batches.
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
      rpc_threads: no longer used (the server holds no thread per stream); kept so that
        the operative_config.gin of earlier runs still parses (`evaluate --logdir`). Set,
        it is reported with a warning, never silently dropped.
      checkpoint_every_minutes: checkpoint period (and one at the end of `run`).
      checkpoints_to_keep: the newest this many are kept (None: all, e.g. to follow the
        torso's health over a run with `experiments/torso_health.py`).
      log_every_seconds: metrics period.
      publish_every_steps: how often new parameters are published.
      batch_source: for tests and benchmarks: a callable returning a `ReadyBatch` (or None)
        used instead of the actors' stream.
      is_chief: whether this worker writes checkpoints, summaries and metrics into
        `logdir`; None: from the strategy's cluster (`distribute.worker_identity`: the
        TF_CONFIG chief, else worker 0). Other workers keep their own checkpoints in
        `logdir/worker_N` (MultiWorkerMirroredStrategy saves on every worker).
      jit_compile: XLA-compile the step (shapes are static). With one replica, the whole
        step; with several (Mirrored, MultiWorkerMirrored) each replica's loss and gradients,
        the all-reduce and the optimiser staying outside XLA, which cannot compile variables
        spread over devices nor a cross-replica sync; under TPUStrategy the TPU compiles the
        whole step anyway and the flag changes nothing. None (the default): as
        `TrainStep.jit_compile` says, so either setting acts.
      max_consecutive_nonfinite_updates: updates whose gradients held NaN/Inf are skipped
        (weights and optimiser state untouched), counted and logged, and traced to the
        unrolls behind them: the actors whose unrolls alone give non-finite gradients are
        refused from then on, and training goes on. This many untraced ones in a row (the
        model itself diverged) stop training with `NonFiniteUpdatesError` (the last
        checkpoint holds finite weights).
      insecure: let the server bind a non-loopback address without TLS and a token
        (`rpc.security`; `train --insecure`).
      num_actors: the run's actor count: unrolls are accepted from actor ids 0 to
        num_actors - 1 only (`train` derives it from `Launcher.num_actors` and the learner
        workers; None: `validation.DEFAULT_NUM_ACTORS`).
      observation_bounds: observation name -> (minimum, maximum), the environment's
        (`specs.observation_bounds`): unrolls outside them are rejected.
      stacked_observations: the environment's (`BatchedEnv.stacked_observations`): actors
        send those observations packed, each frame once (`rpc.frame_packing`).
      stack_frames_on: where stacked frames that came packed become the agent's stacks:
        'host' (the batcher interleaves their pixels: for a learner on CPU, where
        TensorFlow's gather and transpose cost more), 'device' (the batcher copies each
        frame once, `specs.PackedFrames`, and the train step gathers the stacks on the
        accelerator), or 'auto': 'device' when the learner has a GPU or TPU.
      num_envs: environments per actor (`Actor.num_envs`; `train` passes the configured
        one): a stream keeps the last stack of at most this many (None:
        `validation.DEFAULT_NUM_ENVS`).
      actor_seed: `Actor.seed`, which central inference seeds its environment actors from
        (the wiring passes the configured one; not a gin setting of the learner's).
      central: serve central inference (`Launcher.inference = 'central'`,
        `central_inference`): environment actors send steps, this learner acts for them on
        its device and assembles their unrolls. Its actors' parameter pulls and unroll
        streams stay open (unused).
      seed: when set, seeds the agent's initial weights (`keras.utils.set_random_seed`, which
        also seeds this process's Python and NumPy generators) and the minibatch order when
        batches are reused (`RunConfig.num_minibatches`). None: a fresh draw every run.
        Restoring a checkpoint overrides the initial weights either way.
    """

    def __init__(
        self,
        observation_spec: Mapping[str, tf.TensorSpec],
        num_actions: int,
        logdir: str,
        strategy: Optional[tf.distribute.Strategy] = None,
        run_config: Optional[RunConfig] = None,
        server_address: str = "127.0.0.1:0",
        queue_capacity: Optional[int] = None,
        max_message_bytes: Optional[int] = None,
        max_concurrent_rpcs: Optional[int] = None,
        rpc_threads: Optional[int] = None,
        checkpoint_every_minutes: float = 10.0,
        checkpoints_to_keep: Optional[int] = 3,
        log_every_seconds: float = 10.0,
        publish_every_steps: int = 1,
        batch_source: Optional[Callable[[], Optional[ReadyBatch]]] = None,
        is_chief: Optional[bool] = None,
        jit_compile: Optional[bool] = None,
        max_consecutive_nonfinite_updates: int = 100,
        insecure: bool = False,
        num_actors: Optional[int] = None,
        observation_bounds: Optional[Mapping[str, Tuple]] = None,
        stacked_observations: Optional[Mapping[str, int]] = None,
        num_envs: Optional[int] = None,
        stack_frames_on: str = "auto",
        central: bool = False,
        actor_seed: int = 0,
        seed: Optional[int] = None,
        idle_seconds: Optional[float] = None,
    ):
        self.logdir = logdir
        self.worker = distribute.worker_identity(strategy or tf.distribute.get_strategy())
        if is_chief is None:
            is_chief = self.worker.is_chief
        checkpoint_logdir = (logdir if is_chief
                             else os.path.join(logdir, f"worker_{self.worker.index}"))
        self._lock = LogdirLock(checkpoint_logdir)  # first: one learner per logdir
        self._checkpoint_logdir = checkpoint_logdir
        self.server = None
        self.central = None
        try:
            self.max_consecutive_nonfinite_updates = max(
                1, int(max_consecutive_nonfinite_updates))
            self.nonfinite_updates = 0
            self._consecutive_nonfinite = 0
            self.strategy = strategy or tf.distribute.get_strategy()
            self.run_config = run_config or RunConfig()
            self.is_chief = is_chief
            self.frames_per_batch = self.run_config.frames_per_batch
            self._checkpoint_every = checkpoint_every_minutes * 60
            self._log_every = log_every_seconds
            self._publish_every = max(1, int(publish_every_steps))
            self._stop = threading.Event()
            if rpc_threads is not None:
                logging.warning("Learner.rpc_threads = %s is not used any more (the server "
                                "holds no thread per stream); remove it from the config",
                                rpc_threads)
            self.sink_errors = SinkErrors()
            self._shuffle = np.random.default_rng(seed)
            os.makedirs(logdir, exist_ok=True)

            if seed is not None:  # before the agent is built: its initialisers draw from it
                keras.utils.set_random_seed(int(seed))
            with self.strategy.scope():
                self.agent = build_agent(
                    observation_spec, num_actions, num_tasks(observation_bounds or {}))
                self.train_step = build_train_step(self.agent, self.run_config)
            # Central inference's action sampling, made here to be checkpointed.
            self._policy_rng = sampling_generator(seed) if central else None
            self.checkpointer = checkpoints.Checkpointer(
                checkpoint_logdir, self.agent, self.train_step.optimizer,
                max_to_keep=checkpoints_to_keep, popart=self.train_step.popart,
                minibatch_rng=self._shuffle, policy_rng=self._policy_rng)
            # Every worker resumes from the chief's checkpoint: workers that restored
            # different steps would train diverged copies of one model.
            self.restored_from = self.checkpointer.restore_latest(
                from_dir=None if is_chief else checkpoints.checkpoint_dir(logdir))

            initial_state = self.agent.initial_state(1)
            self.wire_spec = unroll_wire_spec(
                observation_spec, num_actions, self.run_config.unroll_length, initial_state)
            self.unrolls: "queue.Queue[Unroll]" = UnrollQueue(
                maxsize=queue_capacity or max(
                    1, self.run_config.batch_size // max(1, self._num_workers())))
            self.parameters = ParameterStore()
            self.publish()  # before the server: its send limit follows from their size
            validator = UnrollValidator(
                codec.spec_from_tensor_specs(self.wire_spec), num_actions, max_message_bytes,
                UnrollLimits(), observation_bounds, num_actors, stacked_observations, num_envs)
            # An explicit limit, else the largest message an honest actor of this run sends:
            # an unroll (the validator's own limit) or, in central mode, a step of K envs.
            self.max_message_bytes = max_message_bytes or max(
                validator.max_message_bytes, step_messages.step_message_limit(
                    {name: (spec.dtype.as_numpy_dtype, tuple(spec.shape))
                     for name, spec in observation_spec.items()}, validator.num_envs)
                if central else 0)
            self.service = LearnerService(validator, self.unrolls, self.parameters,
                                          self._stop, idle_seconds=idle_seconds)
            self.frames_on_device = frames_on_device(stack_frames_on, self.strategy)
            if central:
                self.central = self._central_inference(
                    observation_spec, num_actions, validator.num_envs, actor_seed,
                    stacked_observations, observation_bounds, self.max_message_bytes)
                self.service.central = self.central
            if batch_source is None:
                self.server = LearnerServer(
                    self.service, server_address, self.max_message_bytes,
                    max_concurrent_rpcs=max_concurrent_rpcs or 64 + self.service.calls.most_held(
                        self.service.validator.num_actors, len(METHODS)),
                    insecure=insecure,
                    max_send_bytes=max(self.max_message_bytes,
                                       self.parameters.payload_bytes + (1 << 20))).start()
                local_batch = self.run_config.batch_size // max(1, self._num_workers())
                if local_batch % self.run_config.num_minibatches:
                    raise ValueError(
                        f"Each worker's batch of {local_batch} unrolls does not split into "
                        f"RunConfig.num_minibatches = {self.run_config.num_minibatches}.")
                self.batcher = Batcher(self.unrolls, local_batch, list(observation_spec),
                                       initial_state, frames_on_device=self.frames_on_device)
                self._next_batch = self.batcher.next
            else:
                self.batcher = None
                self._next_batch = batch_source
            if jit_compile is None:
                jit_compile = self.train_step.jit_compile
            whole_step_xla, replica_xla = xla_plan(self.strategy, jit_compile)
            self._local_gradients = (
                tf.function(self.train_step.local_gradients, jit_compile=True)
                if replica_xla else None)
            self._distributed_step = tf.function(self._step_on_replicas,
                                                 jit_compile=whole_step_xla)
            if self.central is not None:
                self.central.start()
            self.metrics = MetricsLog(logdir, write_summaries=is_chief) if is_chief else None
            if is_chief:
                gin_utils.write_operative_config(logdir)
        except BaseException:  # a half-built learner frees its port and its logdir
            if self.server is not None:
                self.server.stop(grace=None)
            if self.central is not None:
                self.central.stop()
            self._lock.release()
            raise

    def _central_inference(self, observation_spec, num_actions, num_envs, actor_seed,
                           stacked, observation_bounds, max_message_bytes):
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            raise ValueError("Launcher.inference = 'central' does not run under the 'tpu' "
                             "strategy yet: use 'actor' on TPUs.")
        validator = self.service.validator
        return CentralInference(
            self.agent, self.unrolls, self.service.counters,
            {name: (spec.dtype.as_numpy_dtype, tuple(spec.shape))
             for name, spec in observation_spec.items()},
            num_actions, num_envs,
            self.run_config.unroll_length, validator.num_actors,
            is_refused=lambda actor_id: actor_id in validator.refused,
            version=lambda: self.learner_step,
            env_seed=int(actor_seed),
            stacked_observations=stacked, observation_bounds=observation_bounds,
            limits=validator.limits, max_message_bytes=max_message_bytes,
            policy_rng=self._policy_rng)

    # -- properties ----------------------------------------------------------------------------
    @property
    def address(self) -> Optional[str]:
        return self.server.address if self.server else None

    @property
    def checkpoint_dir(self) -> str:
        """Where this worker saves: LOGDIR/checkpoints (the chief), LOGDIR/worker_N/..."""
        return checkpoints.checkpoint_dir(self._checkpoint_logdir)

    @property
    def learner_step(self) -> int:
        return int(self.checkpointer.learner_step.numpy())

    @property
    def env_frames(self) -> int:
        return int(self.checkpointer.env_frames.numpy())

    def _num_workers(self) -> int:
        return distribute.num_workers(self.strategy)

    # -- training --------------------------------------------------------------------------------
    def _step_on_replicas(self, distributed_batch, decisions):
        """One update on every replica; `decisions` float32 `[2]` (stop, checkpoint) are
        this worker's wishes, summed over all replicas of all workers into the stats'
        `DECISIONS`, so that every worker stops or checkpoints after the same step."""
        def update(batch, decisions):
            stats = self.train_step.update(batch, local_gradients=self._local_gradients)
            context = tf.distribute.get_replica_context()
            stats[DECISIONS] = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                                  tf.identity(decisions))
            return stats

        per_replica = self.strategy.run(update, args=(distributed_batch, decisions))
        reduced = {}
        for name, value in per_replica.items():
            summed = name in _SUMMED_STATS and self.train_step.loss_reduction == "sum"
            op = tf.distribute.ReduceOp.SUM if summed else tf.distribute.ReduceOp.MEAN
            reduced[name] = self.strategy.reduce(op, value, axis=None)
        # grad_norm and learning_rate are identical on every replica: MEAN keeps them.
        return reduced

    def publish(self) -> None:
        """Makes the current parameters available to actors under the learner step."""
        self.parameters.publish(self.learner_step, parameter_fields(self.agent))

    def stop(self) -> None:
        """Asks `run` to finish after the current step (thread-safe; signal handlers)."""
        self._stop.set()

    def run(self, max_steps: Optional[int] = None,
            progress: Optional[Callable[[dict], None]] = None,
            max_frames: Optional[float] = None) -> dict:
        """Trains until the frame budget (`RunConfig.total_environment_frames`, or
        `max_frames` if lower: the first batch that reaches it is the last), `max_steps`
        more batches or `stop()`; checkpoints at the end. Each batch makes
        `RunConfig.updates_per_batch` updates (one, the paper's, unless reused). Returns the
        last metrics record. A full disk ends it with `DiskFullError` (after a final
        checkpoint where one still fits). Any other exception that leaves the loop (a bug,
        an interrupt) first writes a final checkpoint of the last update, or says why it
        could not (`save_on_exit`), then goes on up."""
        try:
            return self._run(max_steps, progress, max_frames)
        except NonFiniteUpdatesError:
            raise  # it saved the last finite weights itself
        except BaseException as error:  # noqa: BLE001 (saved, then raised again)
            if isinstance(error, LOST_WORKER_ERRORS) and self._num_workers() > 1:
                self._stop_on_lost_worker(error)
            if isinstance(error, (OSError, tf.errors.OpError)) and is_disk_full(error):
                self._stop_on_full_disk(error)
            self.save_on_exit(error)
            raise

    def save_on_exit(self, error: BaseException) -> Optional[str]:
        """Writes a final checkpoint as the run leaves on `error`; says what was saved (or
        why nothing could be, and which checkpoint is the last whole one) on stderr and in
        the error's notes. Returns the checkpoint's path, or None."""
        step = self.learner_step
        path = None
        try:
            path = self.save()
            said = (f"the learner stopped on {type(error).__name__} at learner step {step}; "
                    f"a final checkpoint went to {path}")
        except BaseException as save_error:  # noqa: BLE001 (named, never hides `error`)
            latest = checkpoints.latest_checkpoint(self._checkpoint_logdir)
            said = (f"the learner stopped on {type(error).__name__} at learner step {step} "
                    f"and could not save a final checkpoint ({type(save_error).__name__}: "
                    f"{str(save_error)[:160]}); the last whole checkpoint is "
                    f"{latest or 'none'}")
        print(f"impala_tf: {said}", file=sys.stderr, flush=True)
        if hasattr(error, "add_note"):
            error.add_note(said)
        return path

    def _stop_on_lost_worker(self, error: BaseException) -> None:
        """Another worker went away mid-step (its all-reduce failed). The weights are still
        those of the last whole step: the chief saves them; every worker then stops with one
        line (`WorkerLostError`), and the same command on every worker resumes."""
        cause = " ".join((error.message if hasattr(error, "message") else str(error))
                         .split())[:160]
        saved = ""
        if self.is_chief:
            try:
                saved = f"; the chief saved step {self.learner_step} to {self.save()}"
            except (OSError, tf.errors.OpError):
                saved = "; the chief could not save a final checkpoint"
        raise WorkerLostError(
            f"Learner worker {self.worker.index} of {self.worker.count} lost the cluster at "
            f"learner step {self.learner_step} ({type(error).__name__}: {cause}){saved}. A "
            "multi-worker run stops whole: start every worker again with the same command and "
            "TF_CONFIG, and all resume from the chief's last checkpoint.") from None

    def _run(self, max_steps, progress, max_frames) -> dict:
        """The loop. With several workers every decision to leave it or to checkpoint is
        taken together, at the same step: the frame budget and `max_steps` count the same
        on every worker, and a `stop()` or a due checkpoint on any worker travels with the
        next step's all-reduce (`_step_on_replicas`). A worker that left alone would leave
        the others waiting in the all-reduce for ever."""
        total = min(self.run_config.total_environment_frames, max_frames or float("inf"))
        steps_done = 0
        last_log = last_checkpoint = time.time()
        window = MetricsWindow(self.env_frames)
        record: dict = {}
        together = self._num_workers() > 1
        while (together or not self._stop.is_set()) and self.env_frames < total:
            if max_steps is not None and steps_done >= max_steps:
                break
            ready = self._next_batch()
            if ready is None:
                if time.time() - last_log >= self._log_every:
                    record = self._log(window, progress)
                    last_log = time.time()
                continue
            # Policy lag: updates made since the parameters that acted were published (an
            # unroll acted by a previous learner process, before a restart, may carry a later
            # version than this learner's step: counted as 0).
            lags = np.maximum(self.learner_step - ready.policy_versions, 0)
            culprits = None  # a batch is traced to its unrolls once, whatever its updates
            wishes = tf.constant([float(self._stop.is_set()),
                                  float(time.time() - last_checkpoint >= self._checkpoint_every)])
            for minibatch in minibatches(ready.batch, self.run_config.num_epochs,
                                         self.run_config.num_minibatches, self._shuffle):
                stats = self._distributed_step(split_for_replicas(self.strategy, minibatch),
                                               wishes)
                decisions = stats.pop(DECISIONS).numpy()
                if float(stats["nonfinite_update"]) > 0:
                    window.skipped += 1
                    if culprits is None:
                        culprits = self._trace_nonfinite(ready)
                    self._on_nonfinite_update(stats, culprits)
                else:
                    self._consecutive_nonfinite = 0
                    self.checkpointer.learner_step.assign_add(1)
                    if self.learner_step % self._publish_every == 0:
                        self.publish()
                    window.add(stats, lags)
                    lags = ()  # a batch's lags count once, at its first update
            self.checkpointer.env_frames.assign_add(self.frames_per_batch)
            steps_done += 1
            now = time.time()
            if now - last_log >= self._log_every:
                record = self._log(window, progress)
                last_log = now
            if decisions[1] > 0:  # due on some worker: every worker saves after this step
                self.save()
                last_checkpoint = now
            if together and decisions[0] > 0:
                break
        if window.steps or not record:
            record = self._log(window, progress)
        self.save()
        return record

    def _stop_on_full_disk(self, error: BaseException) -> None:
        """Tries a final checkpoint, then raises `DiskFullError` with one line saying so."""
        where = getattr(error, "filename", None) or str(error).split(";")[0].split("}")[-1]
        try:
            saved = f"a final checkpoint went to {self.save()}"
        except (OSError, tf.errors.OpError):
            latest = checkpoints.latest_checkpoint(self._checkpoint_logdir)
            saved = (f"the last whole checkpoint is {latest}" if latest
                     else "no checkpoint was written")
        raise DiskFullError(
            f"No space left on the device ({where.strip()}): training stopped at "
            f"{self.env_frames:,d} frames, learner step {self.learner_step}; {saved}. Free "
            "some space and run the same command again to resume.") from None

    def _on_nonfinite_update(self, stats, culprits: List[int]) -> None:
        """A skipped update: counted and logged. If it was traced to actors (`culprits`:
        their unrolls alone give non-finite gradients) they are refused from then on; too
        many untraced ones in a row (the model itself diverged) end the run."""
        self.nonfinite_updates += 1
        if culprits:
            newly = self.service.validator.refuse(culprits)
            logging.warning(
                "Skipped a non-finite update (loss %s): traced to unrolls of actor(s) %s, "
                "whose unrolls are refused from now on%s.", float(stats["total_loss"]),
                culprits, "" if newly else " (already refused; their queued unrolls drain)")
            return
        self._consecutive_nonfinite += 1
        logging.warning(
            "Skipped a non-finite update (loss %s, gradient norm %s): %d in a row, %d in all.",
            float(stats["total_loss"]), float(stats["grad_norm"]),
            self._consecutive_nonfinite, self.nonfinite_updates)
        if self._consecutive_nonfinite >= self.max_consecutive_nonfinite_updates:
            self.save()
            raise NonFiniteUpdatesError(
                f"{self._consecutive_nonfinite} updates in a row had non-finite gradients "
                f"(last loss {float(stats['total_loss'])}) that no actor's unrolls explain; "
                f"training stopped with the weights of learner step {self.learner_step}, "
                "which are finite. Look at the rewards (clipping), the learning rate and the "
                "last metrics.jsonl lines.")

    def _trace_nonfinite(self, ready: ReadyBatch) -> List[int]:
        """The actor ids whose unrolls in `ready`, each alone, give non-finite gradients."""
        if ready.actor_ids is None:
            return []
        finite = self.train_step.finite_per_unroll(ready.batch)
        return sorted({int(a) for a in np.asarray(ready.actor_ids)[~finite]})

    def save(self) -> Optional[str]:
        return self.checkpointer.save()

    def _log(self, window: MetricsWindow, progress) -> dict:
        """One metrics record to every sink. A sink that fails (other than a full disk) is
        contained: counted in `logging_errors`, reported once per kind, never fatal."""
        episodes = self.service.counters.pop_episodes()
        record = window.record(self, episodes)
        record["logging_errors"] = self.sink_errors.count
        sinks = [("metrics", self.metrics.write)] if self.metrics is not None else []
        if progress is not None:
            sinks.append(("progress", progress))
        for name, sink in sinks:
            try:
                sink(record)
            except Exception as error:  # noqa: BLE001 (logging must not end training)
                if is_disk_full(error):
                    raise
                self.sink_errors.add(name, error)
        if self.metrics is not None:
            self.sink_errors.absorb(self.metrics.summary_errors)
        window.reset(self.env_frames)
        return record

    def close(self) -> None:
        self._stop.set()
        if self.central is not None:
            self.central.stop()
        if self.batcher is not None:
            self.batcher.stop()
        if self.server is not None:
            self.server.stop(grace=0.5)
        self._lock.release()
