"""A quiet first screen: TensorFlow's start-up lines kept off the terminal.

TensorFlow's C++ side writes straight to file descriptor 2 while it is imported and while it
looks for GPUs (absl's "before InitializeLog" notice, oneDNN's, cudart's, and an error-level
`failed call to cuInit` on a machine with no GPU), and `TF_CPP_MIN_LOG_LEVEL` does not
reach all of it. `import_tensorflow` therefore points fd 2 at a temporary file for the
import and the GPU probe, then replays every captured line that is not one of those known
notices, so a warning that matters still shows. At exit, fd 2 goes to /dev/null after
Python's own output (a traceback included) has been written, which drops TensorFlow's
shutdown lines ("Sharding callback duration"). Python's and absl's INFO lines are held
back too (gin's and absl's chatter), WARNING and above kept.

`IMPALA_TF_VERBOSE=1` (the entry points' `--verbose`) skips all of this.
"""

import atexit
import logging
import os
import re
import sys
import tempfile

VERBOSE_ENV = "IMPALA_TF_VERBOSE"

# Start-up notices that say nothing about this run.
_NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation_placer\.cc",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"TF-TRT Warning: Could not find TensorRT",
    r"Sharding callback duration",
]))


def verbose() -> bool:
    """Whether `--verbose` was given (on this command line, or to the parent process)."""
    if any(arg in ("--verbose", "--verbose=true", "--verbose=1") for arg in sys.argv):
        os.environ[VERBOSE_ENV] = "1"  # inherited by the actor processes
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def define_verbose_flag() -> None:
    """`--verbose` for an entry point's absl flags (read before the flags are parsed)."""
    from absl import flags
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up lines and every "
                          "log line (the first screen is quiet without it).")


def import_tensorflow():
    """Imports TensorFlow (and probes for GPUs) with its start-up notices dropped; returns
    the module. A no-op beyond the import when verbose or when it is already imported."""
    if verbose() or "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices("GPU")  # cuInit happens here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _NOISE.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)
    atexit.register(_silence_shutdown)
    _hold_back_info_logs()
    return tf


def _silence_shutdown() -> None:
    """Registered after TensorFlow's import, so it runs before TensorFlow's own atexit
    work; Python's output is flushed first."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _hold_back_info_logs() -> None:
    logging.getLogger("gin").setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
