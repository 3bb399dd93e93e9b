"""Gin set-up shared by every entry point: register the configurables, resolve experiment
files, parse files and bindings, write the operative config next to the results.

A typo in a binding fails at parse time with gin's message naming the unknown configurable
or parameter; a bad value fails when the object is built, naming the parameter.
"""

import contextlib
import logging
import os
import pathlib
import sys
from typing import Sequence

import gin

# Experiment files `include` each other relative to this folder ('atari/experts_shallow.gin').
EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def register_configurables() -> None:
    """Imports every module that defines a gin configurable."""
    # Every process registers everything, so a config written for one role parses in all.
    # pylint: disable=import-outside-toplevel,unused-import
    import impala_tf.actor  # noqa: F401
    import impala_tf.distribute  # noqa: F401
    import impala_tf.envs.factory  # noqa: F401
    import impala_tf.learner  # noqa: F401
    import impala_tf.networks  # noqa: F401
    import impala_tf.optimizers  # noqa: F401
    import impala_tf.run_config  # noqa: F401
    import impala_tf.train  # noqa: F401
    import impala_tf.train_step  # noqa: F401


def parse_config(gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> None:
    """Clears any previous config, then parses `gin_files` and `gin_bindings` in order."""
    register_configurables()
    gin.clear_config()
    if EXPERIMENTS_DIR.is_dir():
        gin.add_config_file_search_path(str(EXPERIMENTS_DIR))
    resolved = []
    for path in gin_files:
        if not os.path.exists(path) and (EXPERIMENTS_DIR / path).exists():
            path = str(EXPERIMENTS_DIR / path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Gin file {path!r} not found (also looked in {EXPERIMENTS_DIR}).")
        resolved.append(path)
    with _experiments_dir_off_sys_path():
        gin.parse_config_files_and_bindings(resolved, list(gin_bindings))


@contextlib.contextmanager
def _experiments_dir_off_sys_path():
    """A script run from experiments/ puts that folder on sys.path; gin's package-resource
    reader would then import 'atari/' of `include 'atari/experts_shallow.gin'` as a namespace
    package and crash. Hide the folder while parsing."""
    hidden = [p for p in sys.path if p and pathlib.Path(p).resolve() == EXPERIMENTS_DIR]
    sys.path[:] = [p for p in sys.path if p not in hidden]
    # Gin tries each include against the working directory and the Python path first and
    # logs an ERROR for each miss before it finds the file in EXPERIMENTS_DIR; drop those.
    quiet = _DropGinPathMisses()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        sys.path[:0] = hidden
        logging.getLogger().removeFilter(quiet)


class _DropGinPathMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and str(record.msg).startswith("Path not found")
        )


def write_operative_config(logdir: str) -> str:
    """Writes the config actually used (after objects were built) to LOGDIR/operative_config.gin."""
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "operative_config.gin")
    with open(path, "w") as f:
        f.write(gin.operative_config_str())
    return path
