"""Learner-only smoke run: the real update from an experiment's gin file, fed random batches
with the environment's shapes (no environment, no actors): does the experiment build,
compile and step, and how long does an update take?

    python -m impala_tf.learner_smoke --gin_file=experiments/atari/experts_shallow.gin --num_updates=20

The numbers it trains on are noise, so its losses say nothing about learning.
"""

import time

from absl import flags

import impala_tf  # noqa: F401  (sets the Keras backend)
from impala_tf import builders, command_line, config, quiet
from impala_tf.run_config import RunConfig
from impala_tf.synthetic import synthetic_batch
from impala_tf.env_shapes import ENV_SHAPES

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", ["atari/experts_shallow.gin"], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, e.g. 'Agent.use_lstm=False'.")
    flags.DEFINE_enum("env", "atari", sorted(ENV_SHAPES), "Which environment's shapes to use.")
    flags.DEFINE_integer("num_updates", 20, "Learner updates to run.")
    flags.DEFINE_string("logdir", None, "If set, the operative gin config is written here.")


def main(argv) -> None:
    del argv
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    run = RunConfig()
    observation_spec, num_actions = ENV_SHAPES[FLAGS.env]
    agent = builders.build_agent(observation_spec, num_actions)
    step = builders.build_train_step(agent, run)
    batch = synthetic_batch(agent, observation_spec, run.unroll_length, run.batch_size)
    print(
        f"learner-only smoke run ({FLAGS.env} shapes, random data): {agent.count_params():,} "
        f"parameters, T={run.unroll_length}, B={run.batch_size}, "
        f"{run.frames_per_batch} frames per update"
    )
    start = time.perf_counter()
    stats = step(batch)
    print(f"update 1 (tracing and compiling): {time.perf_counter() - start:.1f}s")
    if FLAGS.logdir:
        print("operative config:", config.write_operative_config(FLAGS.logdir))
    start = time.perf_counter()
    for i in range(2, FLAGS.num_updates + 1):
        stats = step(batch)
        elapsed = time.perf_counter() - start
        print(
            f"update {i}: total_loss={float(stats['total_loss']):9.3f} "
            f"lr={float(stats['learning_rate']):.2e} grad_norm={float(stats['grad_norm']):7.3f} "
            f"| {elapsed / (i - 1):.3f}s/update, "
            f"{run.frames_per_batch * (i - 1) / elapsed:,.0f} frames/s",
            flush=True,
        )


if __name__ == "__main__":
    command_line.run(main, __doc__, define_flags, "impala_tf.learner_smoke")
