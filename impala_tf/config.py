"""Gin set-up shared by every entry point: register the configurables, resolve experiment
files, parse files and bindings, write the operative config next to the results.

A typo in a binding fails at parse time with gin's message naming the unknown configurable
or parameter; a bad value fails when the object is built, naming the parameter.
"""

import contextlib
import difflib
import importlib
import importlib.resources
import logging
import os
import pathlib
import re
import sys
import tempfile
from typing import List, Sequence

import gin

# Experiment files `include` each other relative to this folder ('atari/experts_shallow.gin'):
# the checkout's experiments/ where they are written, else the copy an installed package
# ships (setup.py puts it in impala_tf/experiments/).
_CHECKOUT_EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
EXPERIMENTS_DIR = (
    _CHECKOUT_EXPERIMENTS if (_CHECKOUT_EXPERIMENTS / "catch.gin").is_file()
    else pathlib.Path(str(importlib.resources.files("impala_tf") / "experiments")))


_CONFIGURABLE_MODULES = (
    "impala_tf.acting.actor",
    "impala_tf.learning.central_inference",
    "impala_tf.learning.endpoint",
    "impala_tf.distribute",
    "impala_tf.acting.env_actor",
    "impala_tf.envs.factory",
    "impala_tf.learning.learner",
    "impala_tf.networks",
    "impala_tf.learning.optimizers",
    "impala_tf.rpc.security",
    "impala_tf.run_config",
    "impala_tf.launcher",
    "impala_tf.learning.train_step",
    "impala_tf.pbt.population",  # PBT's settings parse in every process (Ray is not imported)
    "impala_tf.pbt.rule",
)


# The configurables of a process that runs no model (`impala_tf.acting.env_actor`): environments,
# transport security, the run's shape. None of them imports TensorFlow.
_LEAN_CONFIGURABLE_MODULES = (
    "impala_tf.acting.env_actor",
    "impala_tf.envs.factory",
    "impala_tf.rpc.security",
    "impala_tf.run_config",
)


def register_configurables(modules: Sequence[str] = _CONFIGURABLE_MODULES) -> None:
    """Imports every module that defines a gin configurable.

    Every process registers everything (`modules`, by default), so a config written for one
    role parses in all; a process that runs no model registers its own few. The
    module running as `__main__` (`python -m impala_tf.train`) is not imported a second time:
    its configurables are already registered under `__main__`, and a second copy would make
    a binding such as `Launcher.num_actors` ambiguous.
    """
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    running = main_spec.name if main_spec is not None else None
    for name in modules:
        if name != running:
            importlib.import_module(name)


# Settings that moved when the learner's server side became `learning.endpoint.ActorEndpoint`,
# and the `Learner` parameters that are gone (an operative_config.gin of an earlier run names
# every parameter, so `evaluate --logdir` of that run would not parse without these).
MOVED_SETTINGS = {f"Learner.{name}": f"ActorEndpoint.{name}" for name in (
    "queue_capacity", "max_message_bytes", "max_concurrent_rpcs", "idle_seconds",
    "num_actors", "stack_frames_on")}
DROPPED_SETTINGS = tuple(f"Learner.{name}" for name in (
    "rpc_threads", "server_address", "batch_source", "is_chief", "insecure",
    "observation_bounds", "stacked_observations", "num_envs", "central", "strategy",
    "run_config"))
_OLD_SETTING = re.compile(r"^(Learner\.\w+)(\s*=)", re.MULTILINE)


def upgrade_settings(text: str) -> "tuple[str, List[str]]":
    """A gin file's `text` with moved settings renamed and dropped ones commented out, and
    the old names it held (none: `text` unchanged)."""
    seen: List[str] = []

    def rewrite(match):
        name = match.group(1)
        if name in MOVED_SETTINGS:
            seen.append(name)
            return MOVED_SETTINGS[name] + match.group(2)
        if name in DROPPED_SETTINGS:
            seen.append(name)
            return "# (no longer a setting) " + match.group(0)
        return match.group(0)

    lines, dropping = [], False
    for line in text.split("\n"):
        if dropping and line[:1] in (" ", "\t", ")", "]", "}"):
            lines.append("# " + line)  # a dropped setting's value, continued
            continue
        line = _OLD_SETTING.sub(rewrite, line)
        dropping = line.startswith("# (no longer")
        lines.append(line)
    return "\n".join(lines), seen


def _upgraded(path: str, workdir: str) -> str:
    """`path`, or a copy in `workdir` with its settings upgraded (`upgrade_settings`)."""
    with open(path) as f:
        text, seen = upgrade_settings(f.read())
    if not seen:
        return path
    logging.warning("%s uses settings of an earlier version: %s (read as %s)", path,
                    ", ".join(seen), ", ".join(MOVED_SETTINGS.get(n, "dropped") for n in seen))
    copy = os.path.join(workdir, f"{len(os.listdir(workdir))}_{os.path.basename(path)}")
    with open(copy, "w") as f:
        f.write(text)
    return copy


class GinFileNotFoundError(FileNotFoundError):
    """A gin file that is neither a path nor an experiment; the message is one line."""


def experiment_names() -> List[str]:
    """The experiments that ship, as `--gin_file` takes them ('atari/pong_shallow.gin')."""
    if not EXPERIMENTS_DIR.is_dir():
        return []
    return sorted(str(p.relative_to(EXPERIMENTS_DIR)) for p in EXPERIMENTS_DIR.rglob("*.gin"))


def resolve_gin_file(path: str) -> str:
    """`path` as given if it exists, else relative to `experiments/`; else
    `GinFileNotFoundError` with one line naming the closest experiments and all of them."""
    if not os.path.exists(path) and (EXPERIMENTS_DIR / path).exists():
        path = str(EXPERIMENTS_DIR / path)
    if not os.path.exists(path):
        names = experiment_names()
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise GinFileNotFoundError(
            f"gin file {path!r} is neither a file nor an experiment; {hint}the experiments "
            f"are: {', '.join(names)}")
    return path


def describe_experiment(gin_file: str) -> str:
    """The comment block that opens an experiment's gin file (what it is, what it reaches),
    without the leading '#'s; '' if the file opens with no comment."""
    lines = []
    with open(resolve_gin_file(gin_file)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
    return "\n".join(lines)


def parse_config(gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
                 lean: bool = False) -> None:
    """Clears any previous config, then parses `gin_files` and `gin_bindings` in order.

    `lean`: register only the configurables of a process that runs no model, and skip the
    bindings of the others (the learner, which parses the same files whole, names a typo).
    """
    register_configurables(_LEAN_CONFIGURABLE_MODULES if lean else _CONFIGURABLE_MODULES)
    gin.clear_config()
    if EXPERIMENTS_DIR.is_dir():
        gin.add_config_file_search_path(str(EXPERIMENTS_DIR))
    with tempfile.TemporaryDirectory(prefix="gin_") as workdir:
        resolved = [_upgraded(resolve_gin_file(path), workdir) for path in gin_files]
        with _experiments_dir_off_sys_path():
            gin.parse_config_files_and_bindings(resolved, list(gin_bindings),
                                                skip_unknown=lean)


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
