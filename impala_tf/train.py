"""One training command: the learner plus actor processes, or either half on its own.

    python -m impala_tf.train --gin_file=atari/experts_shallow.gin --logdir=/tmp/pong
    python -m impala_tf.train --role=learner --gin_file=F --logdir=DIR --bind=0.0.0.0:8470
    python -m impala_tf.train --role=actor --gin_file=F --learner_address=HOST:8470 --actor_index=3

`--role=all` (the default) starts the learner in this process and spawns
`Launcher.num_actors` actor processes on this machine (gRPC over loopback), prints progress
(frames, frames/s, recent return, ETA), restarts an actor that dies (with backoff), and stops
at the configured total frames, at `--max_frames` / `--max_minutes`, or on Ctrl-C / SIGTERM,
with a final checkpoint and no actor process left behind. A run restarted
with the same logdir resumes from its latest checkpoint. The wiring lives in
`impala_tf.launcher`.
"""

import sys

from absl import app, flags

from impala_tf import command_line, config, quiet

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files (see experiments/).")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_string("logdir", None, "Run directory (checkpoints, metrics, summaries).")
    flags.DEFINE_enum("role", "all", ["all", "learner", "actor"], "What this process runs.")
    flags.DEFINE_string("bind", "127.0.0.1:0", "Learner: host:port to listen on. Any address "
                        "but loopback needs TLS and a token (Security.*), or --insecure.")
    flags.DEFINE_bool("insecure", False, "Learner: allow a non-loopback --bind without TLS "
                      "and a token (prints a warning).")
    flags.DEFINE_string("learner_address", None, "Actor: host:port of the learner.")
    flags.DEFINE_integer("actor_index", 0, "Actor: this actor's number.")
    flags.DEFINE_float("max_frames", None, "Stop (with a checkpoint) after this many frames; "
                       "unlike RunConfig.total_environment_frames it leaves the lr schedule be.")
    flags.DEFINE_float("max_minutes", None, "Stop (with a checkpoint) after this wall time.")


def main(argv) -> None:
    del argv
    quiet.import_tensorflow()
    from impala_tf import launcher  # TensorFlow: after the flags (help answers without it)
    from impala_tf.distribute import NoTPUError
    from impala_tf.learning.faults import DiskFullError, WorkerLostError
    from impala_tf.learning.logdir_lock import LogdirInUseError
    from impala_tf.rpc.security import SecurityError, split_address
    from impala_tf.rpc.server import PortInUseError
    try:
        config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    except config.GinFileNotFoundError as error:
        sys.exit(f"impala_tf: {error}")
    if FLAGS.role == "actor":
        if not FLAGS.learner_address:
            raise app.UsageError("--role=actor needs --learner_address=HOST:PORT.")
        # One actor process of the configured inference mode, in this process, until SIGTERM
        # or SIGINT (an actor started by hand on any host).
        from impala_tf.acting.process import run_actor_process
        run_actor_process(FLAGS.learner_address, FLAGS.actor_index,
                          launcher.Launcher().inference)
        return
    if not FLAGS.logdir:
        raise app.UsageError("--logdir is required.")
    try:
        split_address(FLAGS.bind)
    except ValueError as error:
        raise app.UsageError(f"--bind: {error}") from None
    for gin_file in FLAGS.gin_file:  # what the experiment is and what it should reach
        description = config.describe_experiment(gin_file)
        if description:
            print(f"== {gin_file}\n{description}\n", flush=True)
    try:
        launcher.run_learner(FLAGS.logdir, FLAGS.bind, spawn_actors=FLAGS.role == "all",
                             gin_files=FLAGS.gin_file, gin_bindings=FLAGS.gin_bindings,
                             insecure=FLAGS.insecure, max_frames=FLAGS.max_frames,
                             max_minutes=FLAGS.max_minutes)
    except SecurityError as error:
        raise app.UsageError(str(error)) from None
    except (LogdirInUseError, PortInUseError, DiskFullError, NoTPUError,
            WorkerLostError) as error:
        # One line: gin appends "In call to configurable ..." to errors raised in its calls.
        sys.exit(f"impala_tf: {str(error).splitlines()[0]}")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.train")


if __name__ == "__main__":
    cli()
