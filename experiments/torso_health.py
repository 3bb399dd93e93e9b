"""How much of the torso is alive, checkpoint by checkpoint, on one fixed batch of frames.

    python experiments/torso_health.py --gin_file=atari/pong_shallow_adam_t5_b8.gin \
        --checkpoints=logs/run/checkpoints [--every=1] [--envs=16] [--steps=41]

A ReLU unit (or a convolution's channel) that is zero on every frame of a batch gets no
gradient from that batch; a first-layer channel that is zero on every screen a game shows
never learns again (its input, the screen, does not change with training). This collects
one batch of frames (`--envs` environments x `--steps` steps after a warm-up, acted by a
fresh agent seeded by `--seed`: a near-uniform policy sees the screens an early agent
sees), then for that fresh initialisation and for every checkpoint in `--checkpoints`
(every ckpt-N there, in order of N; `Learner.checkpoints_to_keep = None` keeps them all)
prints, for each of the torso's ReLU layers, the share of its units (channels) that are
> 0 on some frame and the share of all its values that are > 0. For the `shallow` and
`nature` torsos.
"""

import glob
import os
import re
from typing import Dict, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import impala_tf  # noqa: F401
from impala_tf import config
from impala_tf.networks import build_agent
from impala_tf.envs.factory import make_environment
from impala_tf.networks.torsos import NatureTorso, ShallowTorso, scale_frame
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.specs import tensor_specs

from diagnose_update import collect_batch  # experiments/, this script's folder

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_string("checkpoints", None, "A checkpoints folder (LOGDIR/checkpoints).")
    flags.DEFINE_integer("every", 1, "Report every n-th checkpoint (the last one always).")
    flags.DEFINE_integer("envs", 16, "Environments in the fixed batch.")
    flags.DEFINE_integer("steps", 41, "Steps per environment in the fixed batch.")
    flags.DEFINE_integer("warmup_steps", 100, "Steps before the batch is collected.")
    flags.DEFINE_integer("seed", 0, "Of the fresh agent that acts the fixed batch (and is "
                         "reported as 'fresh'): the same batch every time.")


def relu_layers(torso, frames: tf.Tensor) -> Dict[str, np.ndarray]:
    """`frames` uint8 `[N, H, W, C]` -> each ReLU layer's output `[N, ..., units]`."""
    if not isinstance(torso, (ShallowTorso, NatureTorso)):
        raise ValueError(f"torso_health reads the shallow and nature torsos, not "
                         f"{type(torso).__name__}.")
    outputs, x = {}, scale_frame(frames)
    for name in ("conv1", "conv2", "conv3"):
        if hasattr(torso, name):
            x = getattr(torso, name)(x)
            outputs[name] = x.numpy()
    outputs["fc"] = torso.fc(torso.flatten(x)).numpy()
    return outputs


def alive_shares(outputs: Dict[str, np.ndarray]) -> Dict[str, Tuple[float, float]]:
    """Per layer: (share of units > 0 on some frame, share of values > 0)."""
    shares = {}
    for name, out in outputs.items():
        positive = out.reshape(-1, out.shape[-1]) > 0
        shares[name] = (float(positive.any(axis=0).mean()), float(positive.mean()))
    return shares


def health(outputs: Dict[str, np.ndarray]) -> str:
    """`alive_shares` as one line, in %."""
    return " | ".join(
        f"{name} {100 * alive:5.1f}% of {outputs[name].shape[-1]} alive ({100 * on:4.1f}% > 0)"
        for name, (alive, on) in alive_shares(outputs).items())


def collect_frames(env, agent, warmup_steps: int, steps: int) -> tf.Tensor:
    """uint8 `[steps * num_envs, H, W, C]` frames acted by `agent`'s policy after
    `warmup_steps` steps (`diagnose_update.collect_batch`'s T+1 = `steps`)."""
    num_actions = env.action_spec().num_values
    batch = collect_batch(env, BatchedPolicy(agent, seed=7), num_actions, steps - 1,
                          warmup_steps)
    frame = batch.trajectory.observation["frame"]
    return tf.reshape(frame, [-1] + frame.shape[2:].as_list())


def checkpoint_prefixes(folder: str):
    """ckpt-N prefixes in `folder`, in order of N."""
    found = glob.glob(os.path.join(folder, "ckpt-*.index"))
    return sorted((p[:-len(".index")] for p in found),
                  key=lambda p: int(re.search(r"ckpt-(\d+)$", p).group(1)))


def main(argv):
    del argv
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    keras.utils.set_random_seed(FLAGS.seed)
    env = make_environment(FLAGS.envs, seed=123)
    num_actions = env.action_spec().num_values
    agent = build_agent(tensor_specs(env.observation_spec()), num_actions)
    frames = collect_frames(env, agent, FLAGS.warmup_steps, FLAGS.steps)
    env.close()
    print(f"fixed batch: {frames.shape[0]} frames")
    print(f"{'fresh':>12s}: {health(relu_layers(agent.torso, frames))}")
    prefixes = checkpoint_prefixes(FLAGS.checkpoints) if FLAGS.checkpoints else []
    chosen = prefixes[::max(1, FLAGS.every)]
    if prefixes and chosen[-1] != prefixes[-1]:
        chosen.append(prefixes[-1])
    checkpoint = tf.train.Checkpoint(agent=agent)
    for prefix in chosen:
        checkpoint.read(prefix).expect_partial()
        print(f"{os.path.basename(prefix):>12s}: {health(relu_layers(agent.torso, frames))}",
              flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
