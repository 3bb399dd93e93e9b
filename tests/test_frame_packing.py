"""Each frame crosses the wire once: packed stacks rebuild exactly, pixel for pixel, on real
Pong with episode ends inside unrolls, whole and continued over a real stream; malformed
packed fields and continuations without what they continue are rejected."""

import queue
import threading
import time

import gin
import tensorflow as tf
import numpy as np
import pytest
from frame_stacks import stacks as _stacks

from impala_tf import config, frames
from impala_tf.acting.actor import Actor
from impala_tf.learning.batcher import stack_unrolls
from impala_tf.learning.process import learner_process
from impala_tf.rpc import codec, frame_packing
from impala_tf.rpc.client import LearnerClient
from impala_tf.rpc.parameter_store import ParameterStore
from impala_tf.rpc.server import LearnerServer
from impala_tf.rpc.service import LearnerService
from impala_tf.rpc.validation import UnrollValidator
from impala_tf.specs import tensor_specs

T = 20


@pytest.mark.parametrize("k", [1, 3])
def test_packed_stacks_rebuild_exactly(k):
    stack = _stacks(np.random.default_rng(k), k=k)
    spec = {"observation/frame": (stack.dtype, stack.shape), "reward": (np.dtype(np.float32),
                                                                         (T + 1,))}
    fields = {"observation/frame": stack, "reward": np.zeros(T + 1, np.float32)}
    packed = frame_packing.pack(fields, {"frame": k})
    assert list(packed) == frame_packing.packed_names(spec, {"frame": k})
    assert packed["observation/frame/restart"].nonzero()[0].tolist() == [7, 15]
    assert packed["observation/frame/restarted"].shape == (2, 6, 5, 3 * k)
    rebuilt = frame_packing.unpack(packed, spec, {"frame": k})
    np.testing.assert_array_equal(rebuilt["observation/frame"], stack)
    assert sum(a.nbytes for a in packed.values()) < 0.4 * sum(a.nbytes for a in fields.values())


@pytest.mark.parametrize("change, message", [
    (lambda p: p.__setitem__("observation/frame/restarted", p["observation/frame/restarted"][:1]),
     "2 restarts"),
    (lambda p: p["observation/frame/restart"].__setitem__(0, True), "restart at step 0"),
    (lambda p: p.__setitem__("observation/frame/newest",
                             p["observation/frame/newest"].astype(np.int32)),
     r"'observation/frame/newest': int32\[21, 6, 5, 1\] != expected uint8"),
    (lambda p: p.__setitem__("observation/frame/restart", p["observation/frame/restart"][:-1]),
     r"'observation/frame/restart': bool\[20\] != expected bool\[21\]"),
    (lambda p: p["observation/frame/restart"].view(np.uint8).__setitem__(3, 2),
     "booleans other than 0 and 1"),
    (lambda p: p.__setitem__("observation/frame/first", p["observation/frame/first"][..., :2]),
     "first"),
    (lambda p: p.pop("observation/frame/restart"), "missing"),
    (lambda p: p.pop("observation/frame/first"), "a continued unroll .* needs meta .env."),
])
def test_malformed_packed_fields_are_codec_errors(change, message):
    stack = _stacks(np.random.default_rng(0))
    spec = {"observation/frame": (stack.dtype, stack.shape)}
    packed = frame_packing.pack({"observation/frame": stack}, {"frame": 1})
    packed = {name: np.array(value) for name, value in packed.items()}
    change(packed)
    with pytest.raises(codec.CodecError, match=message):
        frame_packing.unpack(packed, spec, {"frame": 1})


def _learners_validator(actor, logdir):
    """The validator of a learner built for `actor`'s environment (which this closes)."""
    specs = tensor_specs(actor.env.observation_spec())
    stacked = actor.env.stacked_observations
    actor.close(flush=False)
    learner = learner_process(specs, actor.num_actions, str(logdir), batch_source=lambda: None,
                      stacked_observations=stacked)
    learner.close()
    return learner.endpoint.validator


def _wait(condition, what, timeout=60.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_learner_rebuilds_the_stacks_real_pong_acted_on(tmp_path, monkeypatch):
    """Real Pong, episodes capped at 100 agent steps so that resets (with their no-op
    starts) fall inside T=20 unrolls, sent by the real client to a real server on loopback:
    each environment's first unroll on a stream goes whole and the rest continued, a
    rejected message ends the stream and the next one starts both environments whole again,
    and what the learner batches equals, pixel for pixel, the stacked unrolls the actor
    built, from about a quarter of their bytes."""
    config.parse_config(["atari/pong_shallow.gin"], [
        f"RunConfig.unroll_length = {T}", "Agent.lstm_size = 8", "Actor.num_envs = 2",
        "AtariBatchedEnv.max_episode_frames = 400"])
    built = []
    real_pack = frame_packing.pack

    def spy(fields, stacked):
        built.append({name: np.array(value) for name, value in fields.items()})
        return real_pack(fields, stacked)

    monkeypatch.setattr(frame_packing, "pack", spy)
    try:
        actor = Actor("127.0.0.1:9", actor_index=0)  # never dialled: act() needs no learner
        messages = [m for _ in range(12) for m in actor.act()]
        stacked, specs = actor.env.stacked_observations, actor.env.observation_spec()
        validator = _learners_validator(actor, tmp_path)
    finally:
        gin.clear_config()
    specs = tensor_specs(specs)
    assert stacked == {"frame": 1} and isinstance(validator, UnrollValidator)
    assert len(messages) == len(built) == 24
    assert all(isinstance(m, frame_packing.StreamedUnroll) for m in messages)

    received_sizes = []

    class Spy(UnrollValidator):
        def __call__(self, data, stream=None):
            received_sizes.append(len(data))
            return validator(data, stream)

    spy_validator = Spy.__new__(Spy)
    spy_validator.__dict__.update(validator.__dict__)
    unrolls = queue.Queue()
    service = LearnerService(spy_validator, unrolls, ParameterStore(), threading.Event())
    server = LearnerServer(service, "127.0.0.1:0", 8 << 20).start()
    client = LearnerClient(server.address, 8 << 20, backoff_seconds=0.05)
    try:
        for message in messages[:12]:
            client.send_unroll(message)
        _wait(lambda: service.counters.accepted == 12, "the first 12 unrolls")
        client.send_unroll(b"not an unroll")
        _wait(lambda: service.counters.rejected == 1, "the rejection")
        for message in messages[12:]:
            client.send_unroll(message)
        _wait(lambda: service.counters.accepted == 24, "all 24 unrolls")
    finally:
        client.close()
        server.stop(0)
    whole_size, continued_size = len(messages[0].whole), len(messages[0].continued)
    sizes = [size for size in received_sizes if size > 100]
    # Whole: each environment's first unroll on the first stream and on the second.
    assert [i for i, size in enumerate(sizes) if size >= whole_size] == [0, 1, 12, 13]
    received = [unrolls.get_nowait() for _ in range(24)]
    restarts = 0
    for unroll, fields in zip(received, built):
        assert list(unroll.flat()) == list(fields)
        for name in fields:
            np.testing.assert_array_equal(np.asarray(unroll.flat()[name]), fields[name])
        restarts += int(fields["episode_start"][1:].sum())
    assert restarts >= 2  # episodes ended inside unrolls
    batch = stack_unrolls(received[:4], ())
    expected = np.stack([f["observation/frame"] for f in built[:4]], axis=1)
    np.testing.assert_array_equal(batch.batch.trajectory.observation["frame"], expected)
    stacked_bytes = np.mean([len(codec.encode(codec.UNROLL_MAGIC, f, {})) for f in built])
    assert continued_size < 0.28 * stacked_bytes < whole_size


def _continued_pair(rng, k=1):
    """Two consecutive packed unrolls of one environment (the second starts from the
    first's last stack), as `StreamedUnroll`s, and their stacks."""
    stacks = _stacks(rng, steps=2 * T + 1, k=k, restarts=(5, 30))
    first, second = stacks[:T + 1], stacks[T:]
    meta = {"policy_version": 0, "actor_id": 1}
    return ([frame_packing.encode_streamed({"observation/frame": s}, {"frame": k}, meta, env=1)
             for s in (first, second)], (first, second))


def test_an_environment_id_is_an_int_in_range_and_never_a_boolean():
    assert frame_packing.env_id({}, 4) is None
    assert frame_packing.env_id({"env": 3}, 4) == 3
    for bad in (True, False, 4, -1, 1.0, "1"):
        with pytest.raises(codec.CodecError, match="meta 'env' must be an int in \\[0, 4\\)"):
            frame_packing.env_id({"env": bad}, 4)


def test_an_unexpected_packed_field_is_named():
    (one, _), (first, _) = _continued_pair(np.random.default_rng(7))
    spec = {"observation/frame": (np.dtype(np.uint8), first.shape)}
    fields, _ = codec.decode(one.whole, codec.UNROLL_MAGIC)
    with pytest.raises(codec.CodecError, match=r"missing \[\], unexpected \['junk'\]"):
        frame_packing.unpack({**fields, "junk": np.zeros(1)}, spec, {"frame": 1})


def test_an_unroll_without_stacks_is_streamed_whole_with_its_environment():
    action = np.arange(5, dtype=np.int32)
    streamed = frame_packing.encode_streamed({"action": action}, {}, {"actor_id": 1}, env=3)
    assert streamed.env == 3 and streamed.continued is None
    fields, meta = codec.decode(streamed.whole, codec.UNROLL_MAGIC)
    np.testing.assert_array_equal(fields["action"], action)
    assert meta == {"actor_id": 1, "env": 3}
    (one, two), _ = _continued_pair(np.random.default_rng(6))
    assert one.env == two.env == 1 and two.continued is not None


def test_unpacked_turns_packed_stacks_into_whole_ones_and_leaves_the_rest():
    stacks = _stacks(np.random.default_rng(5))
    action = np.arange(stacks.shape[0], dtype=np.int32)
    out = frame_packing.unpacked({"observation/frame": frames.pack_stacks(stacks, 1),
                                  "action": action})
    assert type(out["observation/frame"]) is np.ndarray
    np.testing.assert_array_equal(out["observation/frame"], stacks)
    assert out["action"] is action


def test_unpack_continues_a_continued_unroll_from_the_previous_stack():
    """`unpack` itself (no validator): a continued unroll's step 0 takes its older frames
    from `previous`, the first unroll's last stack frame by frame."""
    (one, two), (first, second) = _continued_pair(np.random.default_rng(4))
    spec = {"observation/frame": (np.dtype(np.uint8), first.shape)}
    fields, _ = codec.decode(two.continued, codec.UNROLL_MAGIC)
    previous = {"observation/frame": frame_packing.unpack(
        codec.decode(one.whole, codec.UNROLL_MAGIC)[0], spec, {"frame": 1})[
        "observation/frame"].last_frames()}
    rebuilt = frame_packing.unpack(fields, spec, {"frame": 1}, previous)
    np.testing.assert_array_equal(np.asarray(rebuilt["observation/frame"]), second)


def test_a_stream_continues_each_environment_from_its_last_stack():
    (one, two), (first, second) = _continued_pair(np.random.default_rng(3))
    spec = {"observation/frame": (np.dtype(np.uint8), first.shape)}
    validator = UnrollValidator(spec, 3, 1 << 20, num_actors=2,
                                stacked_observations={"frame": 1}, num_envs=2)
    stream = validator.new_stream()
    assert len(two.continued) < len(two.whole) - 80
    for message, stacks in ((one.whole, first), (two.continued, second)):
        unroll, _ = validator(message, stream)
        np.testing.assert_array_equal(np.asarray(unroll.flat()["observation/frame"]), stacks)
    # A continued unroll needs the stream's last stack of its environment, from its actor.
    for message, stream, match in (
            (two.continued, None, "needs meta 'env'"),
            (two.continued, validator.new_stream(), "has not carried that environment"),
            (one.continued, _stream_after(validator, one.whole), "not the newest frame")):
        with pytest.raises(codec.CodecError, match=match):
            validator(message, stream)
    other_actor = frame_packing.encode_streamed(
        {"observation/frame": second}, {"frame": 1}, {"policy_version": 0, "actor_id": 0}, 1)
    with pytest.raises(codec.CodecError, match="has not carried"):
        validator(other_actor.continued, _stream_after(validator, one.whole))
    beyond = frame_packing.encode_streamed(
        {"observation/frame": first}, {"frame": 1}, {"policy_version": 0, "actor_id": 1}, 2)
    with pytest.raises(codec.CodecError, match=r"'env' must be an int in \[0, 2\)"):
        validator(beyond.whole, validator.new_stream())


def _stream_after(validator, *messages):
    stream = validator.new_stream()
    for message in messages:
        validator(message, stream)
    return stream


def test_an_actor_can_send_whole_stacks_and_the_learner_takes_both(tmp_path):
    config.parse_config(["atari/pong_shallow.gin"], [
        "RunConfig.unroll_length = 5", "Agent.lstm_size = 8", "Actor.num_envs = 1",
        "Actor.pack_stacked_frames = False"])
    try:
        actor = Actor("127.0.0.1:9", actor_index=0)
        whole = actor.act()[0]
        actor.pack_stacked_frames = True
        packed = actor.act()[0]
        validator = _learners_validator(actor, tmp_path)
    finally:
        gin.clear_config()
    assert "observation/frame" in codec.decode(whole, codec.UNROLL_MAGIC)[0]
    assert "observation/frame/newest" in codec.decode(packed.whole, codec.UNROLL_MAGIC)[0]
    assert isinstance(packed, frame_packing.StreamedUnroll)
    for message in (whole, packed.whole):
        assert validator(message)[0].flat()["observation/frame"].shape == (6, 84, 84, 4)


def test_a_learner_stacking_frames_in_its_graph_makes_the_same_update(tmp_path):
    """Real Pong unrolls batched frame-major (as for a learner on an accelerator) train a
    mirrored learner over two CPUs, the stacks built in its graph, to the weights a default
    learner reaches from the same unrolls batched as stacks."""
    from impala_tf.learning.batcher import ReadyBatch, as_tensor
    from impala_tf.distribute import make_strategy
    # A learning rate 16 times Pong's: two updates then move the weights well past the
    # tolerance the two learners are compared with, whatever the few frames' gradients are
    # (at 6e-4 the largest move was once 6.6e-5, under the check below).
    config.parse_config(["atari/pong_shallow.gin"], [
        "RunConfig.unroll_length = 5", "RunConfig.batch_size = 2", "Agent.lstm_size = 8",
        "Actor.num_envs = 2", "make_optimizer.learning_rate = 0.01"])
    try:
        actor = Actor("127.0.0.1:9", actor_index=0)
        streamed = actor.act()
        specs = tensor_specs(actor.env.observation_spec())
        stacked, num_actions = actor.env.stacked_observations, actor.num_actions
        validator = _learners_validator(actor, tmp_path / "validator")
        stream = validator.new_stream()
        unrolls = [validator(message.whole, stream)[0] for message in streamed]
        learners = {}
        for name, strategy in (("stacks", None),
                               ("frames", make_strategy("mirrored", num_cpu_devices=2))):
            batches = {}
            learners[name] = learner_process(specs, num_actions, str(tmp_path / name), strategy=strategy,
                                     batch_source=lambda b=batches: b["ready"],
                                     stacked_observations=stacked,
                                     endpoint_settings={"stack_frames_on": "host" if name == "stacks" else "device"})
            ready = stack_unrolls(unrolls, learners[name].agent.initial_state(1),
                                  frames_on_device=learners[name].endpoint.frames_on_device)
            batches["ready"] = ReadyBatch(tf.nest.map_structure(as_tensor, ready.batch),
                                          ready.policy_versions)
        assert learners["frames"].endpoint.frames_on_device and not learners["stacks"].endpoint.frames_on_device
        initial = learners["stacks"].agent.get_weights()
        learners["frames"].agent.set_weights(initial)
        records = {name: learner.run(max_steps=2) for name, learner in learners.items()}
    finally:
        gin.clear_config()
        for learner in locals().get("learners", {}).values():
            learner.close()
    assert records["frames"]["total_loss"] == pytest.approx(records["stacks"]["total_loss"],
                                                            rel=1e-4)
    for a, b in zip(learners["stacks"].agent.get_weights(),
                    learners["frames"].agent.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(
        initial, learners["stacks"].agent.get_weights())) > 1e-4
    with pytest.raises(ValueError, match="stack_frames_on = 'gpu'"):
        learner_process(specs, num_actions, str(tmp_path / "bad"), batch_source=lambda: None,
                endpoint_settings={"stack_frames_on": "gpu"})


def test_stacks_with_values_to_check_are_checked_whole_after_unpacking():
    """A stacked observation whose bound is narrower than its dtype (uint8 in [0, 100]) is
    rebuilt and checked whole: an honest packed unroll comes back as it was sent, one frame
    of 101 anywhere in it is refused, naming the observation."""
    stack = _stacks(np.random.default_rng(8)) % 101
    spec = {"observation/frame": (np.dtype(np.uint8), stack.shape)}
    validator = UnrollValidator(spec, 3, 1 << 20, num_actors=2, stacked_observations={"frame": 1},
                                observation_bounds={"frame": (0, 100)}, num_envs=2)
    meta = {"policy_version": 0, "actor_id": 1}
    honest = frame_packing.encode_streamed({"observation/frame": stack}, {"frame": 1}, meta, 0)
    unroll, _ = validator(honest.whole, validator.new_stream())
    np.testing.assert_array_equal(np.asarray(unroll.flat()["observation/frame"]), stack)
    for step in (0, 10, T):
        bad = stack.copy()
        bad[step, 2, 3, -1] = 101  # in step's newest frame (the packing finds a restart)
        sent = frame_packing.encode_streamed({"observation/frame": bad}, {"frame": 1}, meta, 0)
        with pytest.raises(codec.CodecError, match=r"'observation/frame': values outside"):
            validator(sent.whole, validator.new_stream())


def test_float_stacks_without_a_bound_are_still_checked_for_nan():
    """A stacked float observation with no bound at all (max_abs_observation=None) is still
    rebuilt and checked whole: a NaN in one frame is refused."""
    from impala_tf.rpc.validation import UnrollLimits
    stack = _stacks(np.random.default_rng(9)).astype(np.float32) / 255
    spec = {"observation/frame": (np.dtype(np.float32), stack.shape)}
    validator = UnrollValidator(spec, 3, 1 << 20, num_actors=2, stacked_observations={"frame": 1},
                                limits=UnrollLimits(max_abs_observation=None), num_envs=2)
    meta = {"policy_version": 0, "actor_id": 1}
    honest = frame_packing.encode_streamed({"observation/frame": stack}, {"frame": 1}, meta, 0)
    unroll, _ = validator(honest.whole, validator.new_stream())
    np.testing.assert_array_equal(np.asarray(unroll.flat()["observation/frame"]), stack)
    bad = stack.copy()
    bad[6, 1, 1, -1] = np.nan
    sent = frame_packing.encode_streamed({"observation/frame": bad}, {"frame": 1}, meta, 0)
    with pytest.raises(codec.CodecError, match=r"'observation/frame': contains NaN"):
        validator(sent.whole, validator.new_stream())


def test_packed_names_keep_every_field_in_the_spec_order():
    """A stacked observation between other fields: its parts take its place, and the fields
    before and after it keep theirs (whole or continued)."""
    spec = {"observation/instruction": (np.dtype(np.int32), (T + 1, 4)),
            "observation/frame": (np.dtype(np.uint8), (T + 1, 6, 5, 4)),
            "reward": (np.dtype(np.float32), (T + 1,))}
    assert frame_packing.packed_names(spec, {"frame": 1}) == [
        "observation/instruction", *[f"observation/frame/{p}" for p in frame_packing.PARTS],
        "reward"]
    assert frame_packing.packed_names(spec, {"frame": 1}, continued=True) == [
        "observation/instruction",
        *[f"observation/frame/{p}" for p in frame_packing.CONTINUED_PARTS], "reward"]
    assert "first" in frame_packing.PARTS and "first" not in frame_packing.CONTINUED_PARTS
