"""experiments/torso_health.py: its layer-by-layer pass is the torso's own, a channel that
is zero on every frame is counted dead, checkpoints come in the order they were written;
and the learner can keep every checkpoint for it."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.networks import ShallowTorso
from impala_tf.networks.torsos import NatureTorso

_EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
_PATH = _EXPERIMENTS / "torso_health.py"
sys.path.insert(0, str(_EXPERIMENTS))  # as when run as a script: it imports diagnose_update
_SPEC = importlib.util.spec_from_file_location("torso_health", _PATH)
torso_health = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(torso_health)


def _frames(n=12, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, [n, 84, 84, 4]), tf.uint8)


@pytest.mark.parametrize("torso_class", [ShallowTorso, NatureTorso])
def test_the_layer_by_layer_pass_is_the_torsos_own(torso_class):
    torso, frames = torso_class(), _frames()
    expected = torso(frames).numpy()
    outputs = torso_health.relu_layers(torso, frames)
    np.testing.assert_allclose(outputs["fc"], expected, rtol=1e-5, atol=1e-6)
    convs = [name for name in outputs if name.startswith("conv")]
    assert convs == (["conv1", "conv2"] if torso_class is ShallowTorso
                     else ["conv1", "conv2", "conv3"])
    for out in outputs.values():
        assert out.min() >= 0.0  # ReLU outputs


def test_a_channel_that_is_zero_on_every_frame_is_counted_dead():
    torso, frames = ShallowTorso(), _frames()
    torso(frames)
    before = torso_health.alive_shares(torso_health.relu_layers(torso, frames))["conv1"][0]
    kernel, bias = torso.conv1.kernel, torso.conv1.bias
    # Frames are >= 0, so a channel with a non-positive kernel and a negative bias is 0.
    dead = [c for c in range(16) if c % 3 == 0]
    kernel.assign(tf.where(tf.constant([c in dead for c in range(16)]),
                           -tf.abs(kernel), tf.abs(kernel) + 1e-3))
    bias.assign(tf.where(tf.constant([c in dead for c in range(16)]), -1.0, 0.0))
    outputs = torso_health.relu_layers(torso, frames)
    alive, on = torso_health.alive_shares(outputs)["conv1"]
    assert alive == pytest.approx(1 - len(dead) / 16) and before > 0
    per_channel = outputs["conv1"].reshape(-1, 16)
    assert on == pytest.approx(float(np.mean(per_channel > 0)))
    assert not per_channel[:, dead].any() and (per_channel[:, [1, 2]] > 0).any(axis=0).all()
    assert "conv1  62.5% of 16 alive" in torso_health.health(outputs)


def test_checkpoints_come_in_the_order_they_were_written(tmp_path):
    for n in (9, 10, 100, 1):
        (tmp_path / f"ckpt-{n}.index").write_text("")
        (tmp_path / f"ckpt-{n}.data-00000-of-00001").write_text("")
    names = [pathlib.Path(p).name for p in torso_health.checkpoint_prefixes(str(tmp_path))]
    assert names == ["ckpt-1", "ckpt-9", "ckpt-10", "ckpt-100"]


def test_other_torsos_are_refused_by_name():
    from impala_tf.networks import DeepTorso
    with pytest.raises(ValueError, match="DeepTorso"):
        torso_health.relu_layers(DeepTorso(), _frames(2))
