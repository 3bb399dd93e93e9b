"""Each frame crosses the wire once: packed stacks rebuild exactly, pixel for pixel, on real
Pong with episode ends inside unrolls; malformed packed fields are rejected."""

import gin
import numpy as np
import pytest

from impala_tf import config
from impala_tf.actor import Actor
from impala_tf.batcher import stack_unrolls
from impala_tf.learner import Learner
from impala_tf.rpc import codec, frame_packing
from impala_tf.rpc.validation import UnrollValidator
from impala_tf.specs import tensor_specs

T = 20


def _stacks(rng, steps=T + 1, k=1, depth=4, restarts=(7, 15)):
    """[steps, 6, 5, depth*k] stacks that shift by one frame a step, restarting at
    `restarts` with older frames unrelated to the previous stack."""
    frames = rng.integers(0, 256, (steps + depth, 6, 5, k), dtype=np.uint8)
    stack = np.stack([np.concatenate(frames[t:t + depth], axis=-1) for t in range(steps)])
    for t in restarts:
        stack[t, ..., :-k] = rng.integers(0, 256, stack[t, ..., :-k].shape, dtype=np.uint8)
        for u in range(t + 1, steps):  # later steps shift from the restarted stack
            stack[u, ..., :-k] = stack[u - 1, ..., k:]
    return stack


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
                             p["observation/frame/newest"].astype(np.int32)), "newest"),
    (lambda p: p.__setitem__("observation/frame/first", p["observation/frame/first"][..., :2]),
     "first"),
    (lambda p: p.pop("observation/frame/first"), "missing"),
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
    learner = Learner(specs, actor.num_actions, str(logdir), batch_source=lambda: None,
                      stacked_observations=stacked)
    learner.close()
    return learner.service.validator


def test_the_learner_rebuilds_the_stacks_real_pong_acted_on(tmp_path, monkeypatch):
    """Real Pong, episodes capped at 100 agent steps so that resets (with their no-op
    starts) fall inside T=20 unrolls: what the learner validates and batches equals, pixel
    for pixel, the stacked unrolls the actor built, and the wire carries about a quarter of
    their bytes."""
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
    unrolls = [validator(m)[0] for m in messages]
    assert len(unrolls) == len(built) == 24
    restarts = 0
    for unroll, fields in zip(unrolls, built):
        assert list(unroll.fields) == list(fields)
        for name in fields:
            np.testing.assert_array_equal(unroll.fields[name], fields[name])
        episode_start = fields["episode_start"]
        restarts += int(episode_start[1:].sum())
    assert restarts >= 2  # episodes ended inside unrolls
    batch = stack_unrolls(unrolls[:4], list(specs), ())
    expected = np.stack([f["observation/frame"] for f in built[:4]], axis=1)
    np.testing.assert_array_equal(batch.batch.trajectory.observation["frame"], expected)
    stacked_bytes = np.mean([len(codec.encode(codec.UNROLL_MAGIC, f, {})) for f in built])
    assert np.mean([len(m) for m in messages]) < 0.32 * stacked_bytes


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
    assert "observation/frame/newest" in codec.decode(packed, codec.UNROLL_MAGIC)[0]
    for message in (whole, packed):
        assert validator(message)[0].fields["observation/frame"].shape == (6, 84, 84, 4)
