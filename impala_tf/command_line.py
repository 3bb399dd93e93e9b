"""What every command does before its work: its own `--help`, then absl's flag parsing.

absl's `--help` lists only the flags of the module named by `sys.argv[0]` (for an installed
script that is the script, which defines none) and exits with status 1. `run` answers
`-h`/`--help`/`--helpshort` itself instead: the command's description (its module
docstring), then every flag its `define_flags` defined, `--verbose` included and flags
whose help starts with "(internal)" left out, and exits 0. It does so before the command
imports TensorFlow (the package imports none, and the commands import their heavy modules
inside `main`), so help answers in about a second.
`--helpfull` stays absl's: every flag of every module.
"""

import os
import re
import sys
import textwrap
from typing import Callable, List, Optional, Sequence

from absl import app, flags

HELP_ARGS = ("-h", "--help", "-?", "--helpshort")
INTERNAL = "(internal)"


def help_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether the command line asks for help (before any flag is parsed)."""
    args = sys.argv[1:] if argv is None else argv[1:]
    return any(a in HELP_ARGS for a in args)


def program_name(argv0: Optional[str] = None, module: Optional[str] = None) -> str:
    """'impala-train' for an installed script, 'python -m impala_tf.train' for a module."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0.endswith(".py") and module:
        return f"python -m {module}"
    return os.path.basename(argv0)


def _describe(flag) -> str:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    notes = []
    kind = flag.flag_type()
    if kind.startswith("multi"):
        notes.append("repeatable")
    enum_values = getattr(flag.parser, "enum_values", None)
    if enum_values:
        notes.append("one of " + "|".join(enum_values))
    if flag.default not in (None, [], ""):
        notes.append(f"default: {flag.default_as_str}")
    # absl decorates the help of list and enum flags; the notes say the same, once.
    text = re.sub(r";\s+repeat this option to specify a list of values$", "", flag.help)
    text = re.sub(r"^<[^>]*>: ", "", text)
    text += f" ({'; '.join(notes)})" if notes else ""
    body = textwrap.fill(text, width=88, initial_indent="    ", subsequent_indent="    ")
    return f"  {name}\n{body}"


def render_help(description: str, flag_names: Sequence[str], program: str) -> str:
    """The help text: usage line, description, then each named flag (internal ones left out)."""
    lines = [f"usage: {program} [flags]", "", textwrap.dedent(description or "").strip(), "",
             "flags:"]
    for name in flag_names:
        flag = flags.FLAGS[name]
        if not flag.help.startswith(INTERNAL):
            lines.append(_describe(flag))
    lines += ["", "--helpfull lists every flag of every module (absl's own included)."]
    return "\n".join(lines) + "\n"


def run(main: Callable[[List[str]], None], description: str,
        define_flags: Callable[[], None], module: str) -> None:
    """Defines the command's flags, answers help (exit 0), else `app.run(main)`.

    Args:
      main: absl main, `main(argv)`.
      description: what the command does (its module's docstring).
      define_flags: defines the command's flags (and `--verbose`).
      module: the command's module, for the `python -m` usage line ('impala_tf.train').
    """
    before = set(flags.FLAGS)
    define_flags()
    own = [name for name in flags.FLAGS if name not in before and name != "verbose"]
    own += ["verbose"] if "verbose" in flags.FLAGS else []
    if help_requested():
        sys.stdout.write(render_help(description, own, program_name(module=module)))
        sys.stdout.flush()
        sys.exit(0)
    app.run(main)
