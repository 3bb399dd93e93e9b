"""The batcher's hand-over to TensorFlow: stacked arrays are shared through DLPack when they
can be (aligned, a supported dtype), copied otherwise, and equal numpy's stack either way."""

import gc

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.distribute import make_strategy
from impala_tf.learning.batcher import (aligned_empty, as_tensor, minibatches, split_for_replicas,
                                       stack_unrolls)
from impala_tf.unroll import Trajectory, Unroll


def test_aligned_empty_is_aligned_and_contiguous():
    for shape, dtype in [((21, 32, 84, 84, 4), np.uint8), ((7, 3), np.float32), ((5,), np.int64)]:
        array = aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % 64 == 0


def test_a_shared_tensor_has_the_arrays_values_and_outlives_it():
    array = aligned_empty((16, 256, 256), np.uint8)
    array[...] = np.arange(256, dtype=np.uint8)
    tensor = as_tensor(array)
    array[0, 0, 0] = 99
    assert int(tensor[0, 0, 0]) == 99  # the same buffer: no copy was made
    array[0, 0, 0] = 0
    del array
    gc.collect()
    junk = [np.full((16, 256, 256), 9, np.uint8) for _ in range(4)]  # would reuse it if freed
    np.testing.assert_array_equal(tensor.numpy()[3, 7], np.arange(256, dtype=np.uint8))
    del junk


def test_unshareable_arrays_are_copied():
    misaligned = aligned_empty((4097,), np.uint8)[1:]
    misaligned[...] = 5
    booleans = aligned_empty((3, 4), np.bool_)
    booleans[...] = True
    for array in (misaligned, booleans, np.zeros((0, 3), np.float32)):
        tensor = as_tensor(array)
        np.testing.assert_array_equal(tensor.numpy(), array)
        assert tensor.dtype == tf.as_dtype(array.dtype)


def _unroll(rng, steps, policy_version, actor_id):
    """An unroll whose every field (and LSTM core state) is drawn at random."""
    trajectory = Trajectory(
        {"frame": rng.integers(0, 255, (steps, 6, 6, 4), dtype=np.uint8),
         "instruction": rng.integers(0, 1000, (steps, 3), dtype=np.int32)},
        rng.integers(0, 3, steps).astype(np.int32), rng.normal(size=steps).astype(np.float32),
        rng.random(steps).astype(np.float32), rng.random(steps) < 0.3,
        rng.normal(size=(steps, 3)).astype(np.float32))
    core_state = (rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32))
    return Unroll(trajectory, core_state, policy_version, actor_id)


def test_each_unroll_lands_in_its_own_batch_column_field_by_field():
    """Unroll b's every field is column b of the batch (`[T+1, B, ...]`), its core state is
    row b (`[B, ...]`) and its policy version and actor id are entry b: checked element by
    element against the unroll itself, so a swap of any two columns of any field fails."""
    rng = np.random.default_rng(0)
    steps = 5
    unrolls = [_unroll(rng, steps, policy_version=100 + 7 * i, actor_id=40 - 3 * i)
               for i in range(4)]
    ready = stack_unrolls(unrolls, (np.zeros(7, np.float32), np.zeros(7, np.float32)))
    trajectory = ready.batch.trajectory
    assert set(trajectory.observation) == {"frame", "instruction"}
    for b, unroll in enumerate(unrolls):
        for name in ("frame", "instruction"):
            got = trajectory.observation[name]
            assert got.shape == (steps, 4) + unroll.trajectory.observation[name].shape[1:]
            for t in range(steps):
                np.testing.assert_array_equal(got[t, b], unroll.trajectory.observation[name][t],
                                              err_msg=f"{name} t={t} b={b}")
        for field in Trajectory._fields[1:]:
            got, own = getattr(trajectory, field), getattr(unroll.trajectory, field)
            assert got.dtype == own.dtype and got.shape == (steps, 4) + own.shape[1:], field
            for t in range(steps):
                np.testing.assert_array_equal(got[t, b], own[t], err_msg=f"{field} t={t} b={b}")
        for leaf, own in zip(ready.batch.initial_core_state, unroll.core_state):
            assert leaf.shape == (4, 7)
            np.testing.assert_array_equal(leaf[b], own, err_msg=f"core state b={b}")
        assert ready.policy_versions[b] == 100 + 7 * b
        assert ready.actor_ids[b] == 40 - 3 * b
    assert ready.policy_versions.dtype == ready.actor_ids.dtype == np.int64
    shared = tf.nest.map_structure(as_tensor, ready.batch)  # the hand-over keeps every value
    for got, want in zip(tf.nest.flatten(shared), tf.nest.flatten(ready.batch)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_a_batch_without_core_state_has_none():
    rng = np.random.default_rng(1)
    unrolls = [_unroll(rng, 3, 0, i)._replace(core_state=()) for i in range(2)]
    assert stack_unrolls(unrolls, ()).batch.initial_core_state == ()


def _packed_unroll(stack, actor_id, whole=False, **observations):
    """An unroll of stacked frames `stack` `[T+1, H, W, S]` as the validator hands it over
    (a `PackedStack`; `whole`: the stacks as sent whole), other `observations` beside it,
    zero actions, rewards and logits."""
    from impala_tf.rpc import frame_packing
    steps = stack.shape[0]
    frame = {"observation/frame": stack}
    if not whole:
        spec = {"observation/frame": (np.dtype(np.uint8), stack.shape)}
        frame = frame_packing.unpack(frame_packing.pack(frame, {"frame": 1}), spec, {"frame": 1})
    return Unroll.from_flat({**frame, **{f"observation/{k}": v for k, v in observations.items()},
                             "action": np.zeros(steps, np.int32),
                             "reward": np.zeros(steps, np.float32),
                             "discount": np.ones(steps, np.float32),
                             "episode_start": np.zeros(steps, bool),
                             "behaviour_logits": np.zeros((steps, 3), np.float32)}, 0, actor_id)


def test_packed_frames_are_written_into_the_batch_as_stacks_or_frame_major():
    """Packed unrolls (restarts inside, one at the last step) and a whole one, batched for a
    learner on CPU (stacks) and on an accelerator (each frame once, stacked in the graph,
    XLA too): both equal numpy's stack of the stacks the actor built."""
    from frame_stacks import stacks as _stacks

    from impala_tf.learning.device_frames import PackedFrames, stacks_from_frames
    rng = np.random.default_rng(1)
    stacks = [_stacks(rng, restarts=r) for r in [(), (7, 15), (1, 2, 3), (20,)]] + [
        _stacks(rng, k=1, restarts=(4,))]
    steps = stacks[0].shape[0]
    unrolls = [_packed_unroll(s, i) for i, s in enumerate(stacks[:-1])]
    unrolls.append(_packed_unroll(stacks[-1], 4, whole=True))  # sent whole
    expected = np.stack(stacks, axis=1)
    host = stack_unrolls(unrolls, ()).batch.trajectory.observation["frame"]
    np.testing.assert_array_equal(host, expected)
    assert host.dtype == np.uint8
    device = stack_unrolls(unrolls, (), frames_on_device=True)
    frames = device.batch.trajectory.observation["frame"]
    assert frames.timeline.dtype == np.uint8 and frames.index.dtype == np.int32
    assert isinstance(frames, PackedFrames) and frames.timeline.shape == (
        4 * steps, 5) + expected.shape[2:4] + (1,) and frames.index.shape == (steps, 5, 4)
    # Each frame once: an unroll without restarts reads only its first S-1+T+1 places.
    assert frames.index[:, 0].max() == 3 + steps - 1
    tensors = PackedFrames(as_tensor(frames.timeline), as_tensor(frames.index))
    np.testing.assert_array_equal(stacks_from_frames(tensors).numpy(), expected)
    np.testing.assert_array_equal(
        tf.function(stacks_from_frames, jit_compile=True)(tensors).numpy(), expected)
    # A replica's slice of the batch (axis 1 of both parts) gathers its own unrolls' stacks.
    half = PackedFrames(tensors.timeline[:, 2:4], tensors.index[:, 2:4])
    np.testing.assert_array_equal(stacks_from_frames(half).numpy(), expected[:, 2:4])


def test_a_batch_of_one_unroll_is_stacked_into_aligned_arrays():
    """B = 1, plain and packed frames (as stacks and frame-major): every array of the batch
    is C-contiguous and 64-byte aligned (what lets `as_tensor` share it) and holds the
    unroll's own values and dtypes."""
    from frame_stacks import stacks as _stacks

    rng = np.random.default_rng(4)
    unroll = _unroll(rng, 4, 3, 9)
    state = (np.zeros(7, np.float32), np.zeros(7, np.float32))
    ready = stack_unrolls([unroll], state)
    assert ready.actor_ids.tolist() == [9] and ready.policy_versions.tolist() == [3]
    for got, own in zip(tf.nest.flatten(ready.batch.trajectory),
                        tf.nest.flatten(unroll.trajectory)):
        np.testing.assert_array_equal(got[:, 0], own)
        assert got.dtype == own.dtype and got.flags.c_contiguous and got.ctypes.data % 64 == 0
    for got, own in zip(ready.batch.initial_core_state, unroll.core_state):
        np.testing.assert_array_equal(got[0], own)
        assert got.flags.c_contiguous and got.ctypes.data % 64 == 0
    stack = _stacks(rng, restarts=(5,))
    packed = _packed_unroll(stack, 0)
    host = stack_unrolls([packed], ()).batch.trajectory.observation["frame"]
    np.testing.assert_array_equal(host[:, 0], stack)
    assert host.dtype == np.uint8 and host.ctypes.data % 64 == 0
    device = stack_unrolls([packed], (), frames_on_device=True).batch.trajectory
    timeline = device.observation["frame"].timeline
    assert timeline.dtype == np.uint8 and timeline.shape[1] == 1


def test_a_batch_waits_for_its_last_unroll_and_next_gives_none_meanwhile():
    """Unrolls that arrive apart: next() returns None at its timeout (rather than waiting
    for ever, or handing over a short batch) until the B-th arrives; the thread is a daemon
    named `batcher`, has recorded no bytes before its first batch, and stop() ends it while
    it waits on an empty queue."""
    import queue
    import threading
    import time

    from impala_tf.learning.batcher import Batcher
    rng = np.random.default_rng(5)
    unrolls = queue.Queue()
    batcher = Batcher(unrolls, batch_size=2, initial_state=())
    try:
        assert batcher._thread.name == "batcher" and batcher._thread.daemon
        assert batcher.observation_bytes == 0
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(batcher.next(timeout=0.05)),
                                  daemon=True)
        waiter.start()
        waiter.join(timeout=30)
        assert answers == [None], "next(timeout=0.05) still waiting after 30 s"
        first = _unroll(rng, 3, 0, 0)._replace(core_state=())
        unrolls.put(first)
        time.sleep(0.5)  # five of the batcher's polls of the queue
        assert batcher.next(timeout=0.05) is None and batcher.error is None
        unrolls.put(_unroll(rng, 3, 1, 1)._replace(core_state=()))
        ready = batcher.next(timeout=30)
        assert ready is not None and ready.actor_ids.tolist() == [0, 1]
        assert ready.batch.trajectory.action.shape == (3, 2)
    finally:
        batcher.stop()
    assert not batcher._thread.is_alive(), "stop() left the thread waiting on an empty queue"


@pytest.mark.parametrize("frames_on_device", [None, False, True])
def test_the_batcher_hands_packed_frames_over_as_stacks_or_each_frame_once(frames_on_device):
    """Packed unrolls through the thread: stacks by default and with frames_on_device=False,
    `PackedFrames` (each frame once) with frames_on_device=True. A plain observation beside
    them is stacked either way."""
    import queue

    from frame_stacks import stacks as _stacks

    from impala_tf.learning.batcher import Batcher
    from impala_tf.learning.device_frames import PackedFrames, stacks_from_frames
    rng = np.random.default_rng(6)
    stacks = [_stacks(rng, restarts=r) for r in [(3,), ()]]
    steps = stacks[0].shape[0]
    unrolls = queue.Queue()
    for i, stack in enumerate(stacks):
        unrolls.put(_packed_unroll(stack, i, level=np.full(steps, i, np.int32)))
    kwargs = {} if frames_on_device is None else {"frames_on_device": frames_on_device}
    batcher = Batcher(unrolls, batch_size=2, initial_state=(), **kwargs)
    try:
        ready = batcher.next(timeout=30)
    finally:
        batcher.stop()
    frames, level = (ready.batch.trajectory.observation[n] for n in ("frame", "level"))
    np.testing.assert_array_equal(level.numpy(), [[0, 1]] * steps)
    if frames_on_device:
        assert isinstance(frames, PackedFrames)
        frames = stacks_from_frames(frames)
    else:
        assert isinstance(frames, tf.Tensor)
    np.testing.assert_array_equal(frames.numpy(), np.stack(stacks, axis=1))


def test_the_batcher_thread_hands_over_batches_in_arrival_order_and_prefetches_one():
    """Unrolls in, `[T+1, B, ...]` tensor batches out in arrival order (each unroll in its
    column); with prefetch 1 it stacks one batch ahead and then waits, leaving the rest
    queued (the back-pressure the actors feel); it records the observation bytes of the
    last batch's unrolls; stop() ends its thread."""
    import queue
    import time

    from impala_tf.learning.batcher import Batcher
    rng = np.random.default_rng(2)
    unrolls = queue.Queue()
    sent = [_unroll(rng, 3, policy_version=i, actor_id=i) for i in range(10)]
    for unroll in sent:
        unrolls.put(unroll)
    state = (np.zeros(7, np.float32), np.zeros(7, np.float32))
    batcher = Batcher(unrolls, batch_size=2, initial_state=state)
    try:
        deadline = time.monotonic() + 30  # one batch ready, a second stacked and waiting
        while unrolls.qsize() > 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert unrolls.qsize() == 6 and batcher.ready_batches == 1
        for first in (0, 2, 4):
            ready = batcher.next(timeout=10)
            assert ready.policy_versions.tolist() == [first, first + 1]
            assert ready.actor_ids.tolist() == [first, first + 1]
            assert isinstance(ready.batch.trajectory.action, tf.Tensor)
            for b in range(2):
                np.testing.assert_array_equal(ready.batch.trajectory.observation["frame"][:, b],
                                              sent[first + b].trajectory.observation["frame"])
                np.testing.assert_array_equal(ready.batch.initial_core_state[1][b],
                                              sent[first + b].core_state[1])
        per_unroll = sum(v.nbytes for v in sent[0].trajectory.observation.values())
        deadline = time.monotonic() + 30
        while batcher.ready_batches < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.observation_bytes == 2 * per_unroll
    finally:
        batcher.stop()
    assert not batcher._thread.is_alive()
    assert batcher.error is None


def test_a_batcher_failure_reaches_the_learner():
    """An unroll that cannot be stacked with the others fails the thread; the next call
    to next() raises, naming it, instead of waiting for ever."""
    import queue

    from impala_tf.learning.batcher import Batcher
    rng = np.random.default_rng(3)
    unrolls = queue.Queue()
    unrolls.put(_unroll(rng, 3, 0, 0))
    unrolls.put(_unroll(rng, 4, 0, 1))  # 4 steps where the first had 3
    batcher = Batcher(unrolls, batch_size=2, initial_state=())
    try:
        with pytest.raises(RuntimeError, match="the batcher thread failed"):
            for _ in range(60):
                batcher.next(timeout=0.5)
    finally:
        batcher.stop()
    assert batcher.error is not None


def _numbered_batch(batch_size, steps=3):
    """A learner batch of `batch_size` random unrolls (tensors), and the unrolls."""
    rng = np.random.default_rng(7)
    unrolls = [_unroll(rng, steps, 0, b) for b in range(batch_size)]
    state = (np.zeros(7, np.float32), np.zeros(7, np.float32))
    batch = tf.nest.map_structure(tf.constant, stack_unrolls(unrolls, state).batch)
    return batch, unrolls


def _assert_columns(part, unrolls, columns, what):
    """`part` holds exactly unrolls[columns[j]] in its column j, every field and core state."""
    for j, b in enumerate(columns):
        own = unrolls[b]
        for got, want in zip(tf.nest.flatten(part.trajectory), tf.nest.flatten(own.trajectory)):
            np.testing.assert_array_equal(got.numpy()[:, j], want, err_msg=f"{what} column {j}")
        for got, want in zip(tf.nest.flatten(part.initial_core_state),
                             tf.nest.flatten(own.core_state)):
            np.testing.assert_array_equal(got.numpy()[j], want, err_msg=f"{what} state {j}")
    assert part.trajectory.action.shape[1] == len(columns)


def test_minibatches_are_the_passes_a_seeded_permutation_draws():
    """Two passes of three slices over 6 unrolls: slice k of a pass holds the unrolls at
    places 2k and 2k+1 of that pass's permutation (a fresh one per pass, drawn from the
    same generator), in ascending order, each with its own core state."""
    batch, unrolls = _numbered_batch(6)
    slices = list(minibatches(batch, 2, 3, np.random.default_rng(5)))
    reference = np.random.default_rng(5)
    expected = []
    for _ in range(2):
        order = reference.permutation(6)
        expected += [sorted(order[2 * k:2 * k + 2]) for k in range(3)]
    assert len(slices) == len(expected) == 6
    assert expected[:3] != expected[3:]  # the two passes are drawn in different orders
    for i, (part, columns) in enumerate(zip(slices, expected)):
        _assert_columns(part, unrolls, columns, f"slice {i}")


def test_one_minibatch_is_the_batch_itself_and_an_uneven_split_is_named():
    batch, _ = _numbered_batch(4)
    assert list(minibatches(batch, 3, 1, np.random.default_rng(0))) == [batch] * 3
    with pytest.raises(ValueError, match="Batch size 4 does not split into 3 minibatches"):
        next(minibatches(batch, 1, 3, np.random.default_rng(0)))


def test_each_replica_gets_its_own_consecutive_slice_of_the_batch():
    """Over two (logical CPU) replicas, replica r trains on unrolls 2r and 2r+1 of 4, with
    their core states; one replica gets the batch as it is; 3 unrolls do not split over 2."""
    batch, unrolls = _numbered_batch(4)
    assert split_for_replicas(tf.distribute.get_strategy(), batch) is batch
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    parts = strategy.experimental_local_results(split_for_replicas(strategy, batch))
    assert len(parts) == 2
    for r, part in enumerate(parts):
        _assert_columns(part, unrolls, [2 * r, 2 * r + 1], f"replica {r}")
    odd, _ = _numbered_batch(3)
    with pytest.raises(ValueError, match="Batch size 3 does not split over 2 replicas"):
        split_for_replicas(strategy, odd)
