"""Batcher: B unrolls -> one `[T+1, B, ...]` learner batch, stacked ahead of time.

Stacked frames (`frames.PackedStack`, each frame once, in both inference modes) are written
straight into the batch: as stacks (a learner on CPU), or each frame once for the train
step to stack on the learner's accelerator (`frames_on_device`; `device_frames.PackedFrames`).

A background thread takes unrolls from the service's queue, stacks them with numpy (time
stays the leading axis, the batch is axis 1; core states stack on axis 0), hands them to
TensorFlow without a copy where it can (`as_tensor`) and keeps `prefetch` batch(es) ready,
so the train step never waits on Python stacking while actors keep up. `minibatches` slices
a batch for sample reuse, and `split_for_replicas` then hands each replica its slice.
"""

import queue
import threading
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from impala_tf import distribute
from impala_tf.frames import PackedStack, frame_major
from impala_tf.learning.device_frames import PackedFrames
from impala_tf.queues import put_unless_stopped
from impala_tf.specs import LearnerBatch
from impala_tf.unroll import Trajectory, Unroll


# dtypes whose arrays TensorFlow takes over through DLPack without a copy.
_SHARED_DTYPES = frozenset(np.dtype(d) for d in (np.uint8, np.int32, np.int64, np.float32,
                                                 np.float64))
_ALIGNMENT = 64  # TensorFlow's CPU tensors expect 64-byte aligned buffers


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts on a 64-byte boundary (numpy's
    own are 16-byte aligned), so that `as_tensor` can share it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + _ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % _ALIGNMENT
    return buffer[offset:offset + nbytes].view(dtype).reshape(shape)


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """A tensor of a freshly stacked numpy array: the same buffer, taken over through
    DLPack (the array must not be written afterwards), where its dtype and alignment allow;
    else a copy. A batch of Atari frames is 19 MB: the copy cost about 5 us of learner CPU
    per frame."""
    if (isinstance(array, np.ndarray) and array.dtype in _SHARED_DTYPES and array.size
            and array.flags.c_contiguous and array.ctypes.data % _ALIGNMENT == 0):
        try:
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except Exception:  # noqa: BLE001 (an unsupported layout: copy instead)
            pass
    return tf.convert_to_tensor(array)


class ReadyBatch(NamedTuple):
    """A learner batch (tensors) and, per unroll, the policy version that produced it and
    the actor that sent it (None where unknown: synthetic batches)."""

    batch: LearnerBatch
    policy_versions: np.ndarray
    actor_ids: Optional[np.ndarray] = None


def _stacked(parts: Sequence[np.ndarray], axis: int) -> np.ndarray:
    shape = list(parts[0].shape)
    shape.insert(axis, len(parts))
    return np.stack(parts, axis=axis, out=aligned_empty(shape, parts[0].dtype))


def stack_unrolls(unrolls: Sequence[Unroll], initial_state,
                  frames_on_device: bool = False) -> ReadyBatch:
    """Stacks unrolls into numpy `[T+1, B, ...]` trajectories and `[B, ...]` core states (in
    `initial_state`'s structure); stacked frames (`PackedStack`) are written straight into
    their slot of the batch: as stacks, or with `frames_on_device` each frame once
    (`PackedFrames`, stacked by the train step on the learner's accelerator)."""
    trajectories = [u.trajectory for u in unrolls]
    observation = {}
    for name in trajectories[0].observation:
        parts = [t.observation[name] for t in trajectories]
        observation[name] = (_write_packed(parts, frames_on_device)
                             if any(isinstance(part, PackedStack) for part in parts)
                             else _stacked(parts, 1))
    trajectory = Trajectory(observation, *(
        _stacked([getattr(t, field) for t in trajectories], 1)
        for field in Trajectory._fields[1:]))
    core_state = ()
    if tf.nest.flatten(initial_state):  # each unroll's leaves flattened once, then stacked
        columns = zip(*(tf.nest.flatten(u.core_state) for u in unrolls))
        core_state = tf.nest.pack_sequence_as(initial_state,
                                              [_stacked(leaves, 0) for leaves in columns])
    versions = np.array([u.policy_version for u in unrolls], np.int64)
    actor_ids = np.array([u.actor_id for u in unrolls], np.int64)
    return ReadyBatch(LearnerBatch(trajectory, core_state), versions, actor_ids)


def _write_packed(parts, frames_on_device: bool):
    """One stacked observation of a batch, `[T+1, B, H, W, S*k]`, or its `PackedFrames`
    (`frames_on_device`), from `PackedStack`s (or whole stacks) of its unrolls."""
    shape = list(parts[0].shape)
    if not frames_on_device:
        out = aligned_empty(shape[:1] + [len(parts)] + shape[1:], parts[0].dtype)
        for b, part in enumerate(parts):
            if isinstance(part, PackedStack):
                part.write_into(out[:, b])
            else:
                out[:, b] = part
        return out
    packed = next(part for part in parts if isinstance(part, PackedStack))
    depth, k, steps = packed.depth, packed.k, shape[0]
    timeline = aligned_empty([depth * steps, len(parts)] + shape[1:-1] + [k], parts[0].dtype)
    index = aligned_empty([steps, len(parts), depth], np.int32)
    for b, part in enumerate(parts):
        if isinstance(part, PackedStack):
            part.write_timeline_into(timeline[:, b], index[:, b])
        else:  # a whole stack: each step's S frames in turn
            frames = frame_major(np.asarray(part), k)
            timeline[:, b] = frames.reshape([depth * steps] + shape[1:-1] + [k])
            index[:, b] = np.arange(depth * steps).reshape(steps, depth)
    return PackedFrames(timeline, index)


class Batcher:
    """Prefetches batches of `batch_size` unrolls from `unrolls` in a background thread."""

    def __init__(self, unrolls: "queue.Queue[Unroll]", batch_size: int, initial_state: Any,
                 prefetch: int = 1, frames_on_device: bool = False):
        self._unrolls = unrolls
        self._batch_size = int(batch_size)
        self._initial_state = initial_state
        self._frames_on_device = bool(frames_on_device)
        self._ready: "queue.Queue[ReadyBatch]" = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self.error: Optional[BaseException] = None
        # Observation bytes the unrolls of the last batch brought (stacked frames as they came:
        # each frame once, or whole stacks): what the wire and the queue carried.
        self.observation_bytes = 0
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def _take(self) -> Optional[List[Unroll]]:
        taken = []
        while len(taken) < self._batch_size:
            if self._stop.is_set():
                return None
            try:
                taken.append(self._unrolls.get(timeout=0.1))
            except queue.Empty:
                continue
        return taken

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                unrolls = self._take()
                if unrolls is None:
                    return
                self.observation_bytes = sum(
                    part.nbytes for u in unrolls for part in u.trajectory.observation.values())
                ready = stack_unrolls(unrolls, self._initial_state, self._frames_on_device)
                ready = ready._replace(
                    batch=tf.nest.map_structure(as_tensor, ready.batch))
                put_unless_stopped(self._ready, ready, self._stop.is_set)
        except BaseException as error:  # surfaced to the learner by `next`
            self.error = error

    def next(self, timeout: float = 0.5) -> Optional[ReadyBatch]:
        """The next batch, or None if none was ready within `timeout` seconds."""
        if self.error is not None:
            raise RuntimeError("the batcher thread failed") from self.error
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def ready_batches(self) -> int:
        return self._ready.qsize()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def minibatches(batch: LearnerBatch, num_epochs: int, num_minibatches: int,
                rng: np.random.Generator) -> Iterator[LearnerBatch]:
    """`num_epochs` passes over `batch`, each in `num_minibatches` slices of whole unrolls
    drawn without replacement in a fresh random order per pass: `[T+1, B / num_minibatches,
    ...]` trajectories, `[B / num_minibatches, ...]` core states. One pass, one slice: the
    batch itself."""
    if num_minibatches == 1:
        for _ in range(num_epochs):
            yield batch
        return
    batch_size = int(batch.trajectory.action.shape[1])
    if batch_size % num_minibatches:
        raise ValueError(f"Batch size {batch_size} does not split into {num_minibatches} "
                         "minibatches.")
    size = batch_size // num_minibatches
    for _ in range(num_epochs):
        order = rng.permutation(batch_size)
        for k in range(num_minibatches):
            index = tf.constant(np.sort(order[k * size:(k + 1) * size]), tf.int32)
            yield LearnerBatch(
                tf.nest.map_structure(lambda x: tf.gather(x, index, axis=1), batch.trajectory),
                tf.nest.map_structure(lambda x: tf.gather(x, index, axis=0),
                                      batch.initial_core_state))


def split_for_replicas(strategy: tf.distribute.Strategy, batch: LearnerBatch):
    """Hands each local replica its slice of the batch (axis 1 of the trajectory, axis 0 of
    the core state): this worker's replicas, all of them under a TPU (`distribute`). With one
    replica the batch is returned as it is."""
    if strategy.num_replicas_in_sync == 1:
        return batch
    local_replicas = strategy.num_replicas_in_sync // distribute.worker_identity(strategy).count
    batch_size = int(batch.trajectory.action.shape[1])
    if batch_size % local_replicas:
        raise ValueError(f"Batch size {batch_size} does not split over {local_replicas} replicas.")
    per_replica = batch_size // local_replicas

    def value_fn(context):
        index = context.replica_id_in_sync_group % local_replicas
        start, stop = index * per_replica, (index + 1) * per_replica
        trajectory = tf.nest.map_structure(lambda x: x[:, start:stop], batch.trajectory)
        core_state = tf.nest.map_structure(lambda x: x[start:stop], batch.initial_core_state)
        return LearnerBatch(trajectory, core_state)

    return strategy.experimental_distribute_values_from_function(value_fn)
