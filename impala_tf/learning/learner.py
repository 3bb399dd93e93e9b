"""The learner: the agent, its train step under a `tf.distribute` strategy, and the loop that
takes batches from a feed and makes updates, publishing parameters, checkpointing and
logging as it goes.

The learner knows nothing of gRPC: its batches come from a `Feed` (in a run, the
`endpoint.ActorEndpoint` that serves the actors; in tests and benchmarks, a callable), and
the wiring (`learning.process`) connects the two. One `Learner` per process (per worker in a
multi-worker cluster); `run(feed)` trains until the frame budget is spent or `stop()`.
"""

import os
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Protocol

import gin
import keras
import numpy as np
import tensorflow as tf

from impala_tf import distribute, gin_utils
from impala_tf.acting.policy import sampling_generator
from impala_tf.learning import checkpoints
from impala_tf.learning.batcher import ReadyBatch, minibatches, split_for_replicas
from impala_tf.learning.faults import (LOST_WORKER_ERRORS, NonFiniteGuard,
                                       NonFiniteUpdatesError, disk_full, is_disk_full,
                                       worker_lost)
from impala_tf.learning.logdir_lock import LogdirLock
from impala_tf.learning.metrics import MetricsLog, MetricsWindow, SinkErrors
from impala_tf.learning.placement import xla_plan
from impala_tf.learning.publisher import ParameterPublisher
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.rpc.counters import EpisodeTally
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.run_config import RunConfig
from impala_tf.specs import num_tasks

# Stats summed over replicas (the loss terms when the loss is a sum); the rest are averaged.
_SUMMED_STATS = ("total_loss", "pg_loss", "baseline_loss", "entropy_loss")
DECISIONS = "decisions"  # the step's stats entry: [stop, checkpoint], summed over workers


class Feed(Protocol):
    """Where the learner's batches come from, and where it reports back."""

    def next_batch(self) -> Optional[ReadyBatch]:
        """The next batch, or None if none is ready yet (the loop asks again)."""

    def refuse(self, actor_ids: List[int]) -> bool:
        """Refuses these actors' unrolls from now on; whether any was new."""

    def ingest_metrics(self) -> Dict[str, object]:
        """The feed's figures for the metrics record (queue fill, unrolls, refusals...)."""

    def pop_episodes(self) -> EpisodeTally:
        """The episodes finished since the last call."""


class BatchFeed:
    """A `Feed` of batches made by a callable (tests, benchmarks). `reports`: a feed whose
    refusals, figures and episodes it passes on (an endpoint that serves no batches); None:
    nothing to refuse, no figures, no episodes."""

    def __init__(self, next_batch: Callable[[], Optional[ReadyBatch]],
                 reports: Optional[Feed] = None):
        self.next_batch, self._reports = next_batch, reports

    def refuse(self, actor_ids: List[int]) -> bool:
        return self._reports.refuse(actor_ids) if self._reports is not None else False

    def ingest_metrics(self) -> Dict[str, object]:
        return self._reports.ingest_metrics() if self._reports is not None else {}

    def pop_episodes(self) -> EpisodeTally:
        return (self._reports.pop_episodes() if self._reports is not None
                else EpisodeTally())


@gin.configurable(allowlist=["checkpoint_every_minutes", "checkpoints_to_keep",
                             "log_every_seconds", "publish_every_steps",
                             "publish_asynchronously", "jit_compile",
                             "max_consecutive_nonfinite_updates", "seed"])
class Learner:
    """Trains the agent on the batches of a feed.

    Args:
      observation_spec, num_actions: the environment's (tf.TensorSpec per observation).
      logdir: checkpoints, summaries, metrics.jsonl and the operative config go here.
      strategy: a `tf.distribute.Strategy` (see `distribute.make_strategy`).
      run_config: unroll length, batch size, frame budget.
      observation_bounds: observation name -> (minimum, maximum), the environment's
        (`specs.observation_bounds`): a task id among them makes a multi-task agent.
      central: the learner acts for its actors (central inference): it keeps the action
        sampling's generator (`policy_rng`) and checkpoints it.
      checkpoint_every_minutes: checkpoint period (and one at the end of `run`).
      checkpoints_to_keep: the newest this many are kept (None: all, e.g. to follow the
        torso's health over a run with `experiments/torso_health.py`).
      log_every_seconds: metrics period.
      publish_every_steps: how often new parameters are published (`parameters`).
      publish_asynchronously: publish from a thread (`publisher.ParameterPublisher`): the
        update loop only queues a device-side copy of the weights, and never waits for the
        update to finish; the parameters reach actors a little later (`publish_lag_mean`
        in the metrics). False: read them back and publish after each update, waiting.
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
        refused from then on (`Feed.refuse`), and training goes on. This many untraced ones
        in a row (the model itself diverged) stop training with `NonFiniteUpdatesError`
        (the last checkpoint holds finite weights).
      seed: when set, seeds the agent's initial weights (`keras.utils.set_random_seed`, which
        also seeds this process's Python and NumPy generators), the minibatch order when
        batches are reused (`RunConfig.num_minibatches`) and central inference's action
        sampling. None: a fresh draw every run. Restoring a checkpoint overrides the initial
        weights either way.
    """

    def __init__(
        self,
        observation_spec: Mapping[str, tf.TensorSpec],
        num_actions: int,
        logdir: str,
        strategy: Optional[tf.distribute.Strategy] = None,
        run_config: Optional[RunConfig] = None,
        observation_bounds: Optional[Mapping] = None,
        central: bool = False,
        checkpoint_every_minutes: float = 10.0,
        checkpoints_to_keep: Optional[int] = 3,
        log_every_seconds: float = 10.0,
        publish_every_steps: int = 1,
        publish_asynchronously: bool = True,
        is_chief: Optional[bool] = None,
        jit_compile: Optional[bool] = None,
        max_consecutive_nonfinite_updates: int = 100,
        seed: Optional[int] = None,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.worker = distribute.worker_identity(self.strategy)
        self.is_chief = self.worker.is_chief if is_chief is None else is_chief
        self._checkpoint_logdir = (logdir if self.is_chief
                                   else os.path.join(logdir, f"worker_{self.worker.index}"))
        self._lock = LogdirLock(self._checkpoint_logdir)  # first: one learner per logdir
        try:
            self.run_config = run_config or RunConfig()
            # First, in one line: a batch that does not divide over the replicas (a TPU
            # slice's cores, every host's) fails here, not at the first update.
            self.split = distribute.batch_split(self.strategy, self.run_config.batch_size,
                                                self.run_config.num_minibatches)
            self.frames_per_batch = self.run_config.frames_per_batch
            self._checkpoint_every = checkpoint_every_minutes * 60
            self._log_every = log_every_seconds
            self._publish_every = max(1, int(publish_every_steps))
            self._stop = threading.Event()
            self.nonfinite = NonFiniteGuard(max_consecutive_nonfinite_updates)
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
            self.policy_rng = sampling_generator(seed) if central else None
            self.checkpointer = checkpoints.Checkpointer(
                self._checkpoint_logdir, self.agent, self.train_step.optimizer,
                max_to_keep=checkpoints_to_keep, popart=self.train_step.popart,
                minibatch_rng=self._shuffle, policy_rng=self.policy_rng)
            # Every worker resumes from the chief's checkpoint: workers that restored
            # different steps would train diverged copies of one model.
            self.restored_from = self.checkpointer.restore_latest(
                from_dir=None if self.is_chief else checkpoints.checkpoint_dir(logdir))
            self.parameters = ParameterStore()
            self.publisher = ParameterPublisher(self.agent, self.parameters,
                                                lambda: self.learner_step,
                                                asynchronous=publish_asynchronously)
            self.publish()
            if jit_compile is None:
                jit_compile = self.train_step.jit_compile
            self.jit_compile = bool(jit_compile)  # central inference's step follows it
            whole_step_xla, replica_xla = xla_plan(self.strategy, jit_compile)
            self._local_gradients = (
                tf.function(self.train_step.local_gradients, jit_compile=True)
                if replica_xla else None)
            self._distributed_step = tf.function(self._step_on_replicas,
                                                 jit_compile=whole_step_xla)
            self.metrics = MetricsLog(logdir) if self.is_chief else None
            if self.is_chief:
                gin_utils.write_operative_config(logdir)
        except BaseException:  # a half-built learner frees its logdir
            if getattr(self, "publisher", None) is not None:
                self.publisher.close()
            self._lock.release()
            raise

    # -- properties ----------------------------------------------------------------------------
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

    @property
    def nonfinite_updates(self) -> int:
        """Updates skipped for non-finite gradients in this process."""
        return self.nonfinite.total

    @property
    def num_workers(self) -> int:
        return distribute.num_workers(self.strategy)

    @property
    def local_batch_size(self) -> int:
        """The unrolls of this worker's share of a batch (all of it under a TPU, whose one
        process feeds every host's cores)."""
        return self.split.local_batch_size

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
        """Makes the current parameters available to actors under the learner step, now."""
        self.publisher.publish_now(self.learner_step)

    def stop(self) -> None:
        """Asks `run` to finish after the current step (thread-safe; signal handlers)."""
        self._stop.set()

    def run(self, feed: Feed, max_steps: Optional[int] = None,
            progress: Optional[Callable[[dict], None]] = None,
            max_frames: Optional[float] = None) -> dict:
        """Trains on `feed`'s batches until the frame budget
        (`RunConfig.total_environment_frames`, or `max_frames` if lower: the first batch that
        reaches it is the last), `max_steps` more batches or `stop()`; checkpoints at the
        end. Each batch makes `RunConfig.updates_per_batch` updates (one, the paper's, unless
        reused). Returns the last metrics record. A full disk ends it with `DiskFullError`
        (after a final checkpoint where one still fits). Any other exception that leaves the
        loop (a bug, an interrupt) first writes a final checkpoint of the last update, or says
        why it could not (`save_on_exit`), then goes on up."""
        try:
            return self._run(feed, max_steps, progress, max_frames)
        except NonFiniteUpdatesError:
            raise  # it saved the last finite weights itself
        except BaseException as error:  # noqa: BLE001 (saved, then raised again)
            if isinstance(error, LOST_WORKER_ERRORS) and self.num_workers > 1:
                raise worker_lost(error, self.worker, self.learner_step,
                                  self.save if self.is_chief else None) from None
            if isinstance(error, (OSError, tf.errors.OpError)) and is_disk_full(error):
                raise disk_full(error, self.env_frames, self.learner_step, self.save,
                                self.latest_checkpoint) from None
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
            said = (f"the learner stopped on {type(error).__name__} at learner step {step} "
                    f"and could not save a final checkpoint ({type(save_error).__name__}: "
                    f"{str(save_error)[:160]}); the last whole checkpoint is "
                    f"{self.latest_checkpoint() or 'none'}")
        print(f"impala_tf: {said}", file=sys.stderr, flush=True)
        if hasattr(error, "add_note"):
            error.add_note(said)
        return path

    def _run(self, feed: Feed, max_steps, progress, max_frames) -> dict:
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
        together = self.num_workers > 1
        while (together or not self._stop.is_set()) and self.env_frames < total:
            if max_steps is not None and steps_done >= max_steps:
                break
            ready = feed.next_batch()
            if ready is None:
                if time.time() - last_log >= self._log_every:
                    record = self._log(feed, window, progress)
                    last_log = time.time()
                continue
            decisions = self._train_on(ready, feed, window, wishes=tf.constant([
                float(self._stop.is_set()),
                float(time.time() - last_checkpoint >= self._checkpoint_every)]))
            self.checkpointer.env_frames.assign_add(self.frames_per_batch)
            steps_done += 1
            now = time.time()
            if now - last_log >= self._log_every:
                record = self._log(feed, window, progress)
                last_log = now
            if decisions[1] > 0:  # due on some worker: every worker saves after this step
                self.save()
                last_checkpoint = now
            if together and decisions[0] > 0:
                break
        self.publisher.flush()  # the actors get the run's last parameters
        if window.steps or not record:
            record = self._log(feed, window, progress)
        self.save()
        return record

    def _train_on(self, ready: ReadyBatch, feed: Feed, window: MetricsWindow,
                  wishes: tf.Tensor) -> np.ndarray:
        """The batch's updates; returns the last one's summed `DECISIONS`."""
        # Policy lag: updates made since the parameters that acted were published (an unroll
        # acted by a previous learner process, before a restart, may carry a later version
        # than this learner's step: counted as 0).
        lags = np.maximum(self.learner_step - ready.policy_versions, 0)
        culprits = None  # a batch is traced to its unrolls once, whatever its updates
        for minibatch in minibatches(ready.batch, self.run_config.num_epochs,
                                     self.run_config.num_minibatches, self._shuffle):
            stats = self._distributed_step(split_for_replicas(self.strategy, minibatch), wishes)
            decisions = stats.pop(DECISIONS).numpy()
            if float(stats["nonfinite_update"]) > 0:
                window.skipped += 1
                if culprits is None:
                    culprits = self._trace_nonfinite(ready)
                self.nonfinite.skipped(stats, culprits, feed.refuse, self.save,
                                       self.learner_step)
                continue
            self.nonfinite.finite()
            self.checkpointer.learner_step.assign_add(1)
            if self.learner_step % self._publish_every == 0:
                self.publisher.publish(self.learner_step)
            window.add(stats, lags)
            lags = ()  # a batch's lags count once, at its first update
        return decisions

    def _trace_nonfinite(self, ready: ReadyBatch) -> List[int]:
        """The actor ids whose unrolls in `ready`, each alone, give non-finite gradients."""
        if ready.actor_ids is None:
            return []
        finite = self.train_step.finite_per_unroll(ready.batch)
        return sorted({int(a) for a in np.asarray(ready.actor_ids)[~finite]})

    def save(self) -> Optional[str]:
        return self.checkpointer.save()

    def latest_checkpoint(self) -> Optional[str]:
        return checkpoints.latest_checkpoint(self._checkpoint_logdir)

    def _log(self, feed: Feed, window: MetricsWindow, progress) -> dict:
        """One metrics record to every sink. A sink that fails (other than a full disk) is
        contained: counted in `logging_errors`, reported once per kind, never fatal."""
        record = window.record(self.env_frames, self.learner_step, self.nonfinite_updates,
                               feed.ingest_metrics(), feed.pop_episodes())
        record["logging_errors"] = self.sink_errors.count
        record["publish_lag_mean"] = self.publisher.pop_publish_lag()
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
        self.publisher.close()
        self._lock.release()
