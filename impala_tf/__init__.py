"""impala_tf: IMPALA (Espeholt et al., 2018) in TensorFlow 2 / Keras 3.

Importing the package pins Keras 3 to the TensorFlow backend, so that Keras
layers, `tf.function`, `tf.distribute` and XLA all see the same tensors, and imports
TensorFlow with its start-up notices kept off the terminal (`impala_tf.quiet`; `--verbose`
or IMPALA_TF_VERBOSE=1 shows them).

Two exceptions: a process started as `python -m impala_tf.acting.env_actor` (central
inference: it steps environments and runs no model) never imports TensorFlow, and a command
asked for `--help` answers before importing it (`impala_tf.command_line`).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Processes that run no model: they must not pay for TensorFlow (about 0.5 GB resident).
LEAN_ENTRY_POINTS = ("impala_tf.acting.env_actor", "impala_tf.plot")
LEAN_SCRIPTS = ("impala-plot",)


def lean_process() -> bool:
    """Whether this process was started as one of `LEAN_ENTRY_POINTS` (`python -m ...`) or
    `LEAN_SCRIPTS` (installed console scripts)."""
    argv = list(getattr(sys, "orig_argv", ()))
    if sys.argv and os.path.basename(sys.argv[0]) in LEAN_SCRIPTS:
        return True
    return any(a == "-m" and b in LEAN_ENTRY_POINTS for a, b in zip(argv, argv[1:]))


from impala_tf.command_line import help_requested  # noqa: E402

if not lean_process() and not help_requested():
    from impala_tf import quiet  # noqa: E402

    quiet.import_tensorflow()

__version__ = "0.1.0"
