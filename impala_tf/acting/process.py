"""An actor process, of either kind, until SIGTERM or SIGINT, its budget, or its parent's
death:

    python -m impala_tf.acting.process --learner_address=HOST:PORT --actor_index=3 \
        --gin_file=atari/experts_shallow.gin [--inference=central]

`--inference=actor` (the paper's) runs an `actor.Actor`: K environments and its own copy of
the policy, unrolls streamed to the learner. `--inference=central` (SEED RL's) runs an
`env_actor.EnvActor`: K environments only, the learner acts; such a process never imports
TensorFlow. The local launcher starts these itself (`Launcher.inference`); `train
--role=actor` runs one in its own process.
"""

import logging
import os
import signal
import threading
from typing import Optional

from absl import app, flags

from impala_tf import command_line, quiet
from impala_tf.acting import INFERENCE_MODES

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_string("learner_address", None, "host:port of the learner.")
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_integer("actor_index", 0, "This actor's number.")
    flags.DEFINE_enum("inference", "actor", list(INFERENCE_MODES),
                      "Where the policy runs: in this process ('actor') or on the learner "
                      "('central', an environment actor without TensorFlow).")
    flags.DEFINE_integer("max_unrolls", None, "actor: stop after this many rounds of unrolls.")
    flags.DEFINE_integer("max_steps", None, "central: stop after this many agent steps.")
    flags.DEFINE_integer("learner_step", 0, "(internal) The run's step now (the launcher "
                         "passes the learner's): seeds mix it in past step 0, so a resumed run "
                         "does not replay the episodes of step 0.")
    flags.DEFINE_integer("parent_pid", None, "(internal) Stop when this process is no longer "
                         "our parent (set by the local launcher, so its actors die with it).")


def stop_event(parent_pid: Optional[int] = None, poll_seconds: float = 1.0) -> threading.Event:
    """An event set by SIGTERM or SIGINT and, with `parent_pid`, once that process is no
    longer this one's parent (it died)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if parent_pid is not None:
        def watch():
            while not stop.wait(poll_seconds):
                if os.getppid() != parent_pid:
                    logging.warning("parent process %d is gone; stopping", parent_pid)
                    stop.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return stop


def run_actor_process(learner_address: str, actor_index: int, inference: str = "actor",
                      parent_pid: Optional[int] = None, learner_step: int = 0,
                      max_unrolls: Optional[int] = None,
                      max_steps: Optional[int] = None) -> None:
    """The body of an actor process of kind `inference` (gin already parsed)."""
    stop = stop_event(parent_pid)
    if inference == "central":
        from impala_tf.acting.env_actor import EnvActor
        env_actor = EnvActor(learner_address, actor_index=actor_index)
        try:
            env_actor.run(stop, max_steps=max_steps)
        finally:
            env_actor.close()
        return
    from impala_tf.acting.actor import Actor, configure_actor_threads
    configure_actor_threads()
    actor = Actor(learner_address, actor_index=actor_index, learner_step=learner_step)
    try:
        actor.run(stop, max_unrolls=max_unrolls)
    finally:
        actor.close(flush=not stop.is_set())


def main(argv) -> None:
    del argv
    if not FLAGS.learner_address:
        raise app.UsageError("--learner_address=HOST:PORT is required.")
    central = FLAGS.inference == "central"
    if not central:
        quiet.import_tensorflow()
    from impala_tf import config  # the wiring's registry: commands only
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings, lean=central)
    logging.info("%s %d connecting to %s", "environment actor" if central else "actor",
                 FLAGS.actor_index, FLAGS.learner_address)
    run_actor_process(FLAGS.learner_address, FLAGS.actor_index, FLAGS.inference,
                      FLAGS.parent_pid, FLAGS.learner_step, FLAGS.max_unrolls, FLAGS.max_steps)


if __name__ == "__main__":
    command_line.run(main, __doc__, define_flags, "impala_tf.acting.process")
