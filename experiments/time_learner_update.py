"""Parameter counts and the time of one learner update, on this machine.

    python experiments/time_learner_update.py [--updates 3]

Times the real update (`TrainStep`, graph mode and XLA) on random batches with the paper's
shapes: shallow agent on Atari (T=20, B=32) and deep agent on DMLab (T=100, B=32).
Prints a table; nothing is asserted (this machine is shared and noisy).
"""

import argparse
import os
import platform
import time

import impala_tf  # noqa: F401
import tensorflow as tf

from impala_tf import config
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.env_shapes import ENV_SHAPES
from impala_tf.run_config import RunConfig
from impala_tf.synthetic import synthetic_batch

CASES = [
    # (label, gin file, env shapes)
    ("shallow, Atari 84x84x4, T=20, B=32", "atari/experts_shallow.gin", "atari"),
    ("deep, Atari 84x84x4, T=20, B=32", "atari/experts_deep.gin", "atari"),
    ("deep, DMLab 72x96x3, T=100, B=32", "dmlab/single_task_deep.gin", "dmlab"),
]


def time_case(gin_file, env, jit_compile, updates):
    config.parse_config([gin_file], [f"TrainStep.jit_compile = {jit_compile}"])
    run = RunConfig()
    spec, num_actions = ENV_SHAPES[env]
    agent = build_agent(spec, num_actions)
    step = build_train_step(agent, run)
    batch = synthetic_batch(agent, spec, run.unroll_length, run.batch_size)
    start = time.perf_counter()
    float(step(batch)["total_loss"])
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        float(step(batch)["total_loss"])
    per_update = (time.perf_counter() - start) / updates
    return agent.count_params(), first, per_update, run.frames_per_batch / per_update


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per case")
    parser.add_argument("--no_xla", action="store_true", help="skip the jit_compile=True rows")
    args = parser.parse_args()
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'case':40s} {'xla':>5s} {'params':>10s} {'1st (s)':>8s} {'s/update':>9s} "
          f"{'frames/s':>9s}")
    for label, gin_file, env in CASES:
        for jit in (False,) if args.no_xla else (False, True):
            params, first, per_update, fps = time_case(gin_file, env, jit, args.updates)
            print(f"{label:40s} {str(jit):>5s} {params:>10,d} {first:8.1f} {per_update:9.3f} "
                  f"{fps:9,.0f}", flush=True)


if __name__ == "__main__":
    main()
