"""Every command answers `--help` with its description and its own flags, exits 0, hides
internal flags, and (where it can) answers before importing TensorFlow."""

import subprocess
import sys

import pytest
from absl import flags

from impala_tf import command_line

# command module -> (a phrase of its description, flags it must list, imports TensorFlow)
COMMANDS = {
    "impala_tf.train": ("One training command", ["gin_file", "logdir", "role", "max_frames",
                                                 "max_minutes", "verbose"], False),
    "impala_tf.evaluate": ("Evaluates a checkpoint", ["logdir", "checkpoint", "num_episodes",
                                                     "greedy", "verbose"], False),
    "impala_tf.plot": ("Learning curves", ["out", "labels", "smooth_episodes", "verbose"],
                       False),
    "impala_tf.tools.benchmark": ("Throughput benchmark", ["gin_file", "seconds", "stages",
                                                           "json", "verbose"], False),
    "impala_tf.acting.process": ("An actor process, of either kind", [
        "learner_address", "gin_file", "actor_index", "inference", "max_unrolls", "max_steps",
        "verbose"], False),
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_lists_the_commands_own_flags_and_exits_0(module):
    phrase, names, imports_tensorflow = COMMANDS[module]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith(f"usage: python -m {module} [flags]\n")
    assert phrase in out
    for name in names:
        assert f"  --{name}\n" in out or f"  --[no]{name}\n" in out, (name, out)
    assert "(internal)" not in out and "--stage_out" not in out
    assert "repeat this option" not in out  # absl's decoration, said once as "(repeatable)"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert ("tensorflow" in imported) == imports_tensorflow


def test_render_help_hides_internal_flags_and_notes_defaults():
    values = flags.FlagValues()
    flags.DEFINE_integer("steps", 5, "How many steps.", flag_values=values)
    flags.DEFINE_multi_string("gin_file", [], "Gin files.", flag_values=values)
    flags.DEFINE_enum("mode", "a", ["a", "b"], "Which mode.", flag_values=values)
    flags.DEFINE_string("stage", None, "(internal) the stage.", flag_values=values)
    saved = command_line.flags.FLAGS
    command_line.flags.FLAGS = values
    try:
        text = command_line.render_help("Does a thing.\n\nMore.", ["steps", "gin_file",
                                                                  "mode", "stage"], "prog")
    finally:
        command_line.flags.FLAGS = saved
    assert text.startswith("usage: prog [flags]\n\nDoes a thing.\n\nMore.\n\nflags:\n")
    assert "  --steps\n    How many steps. (default: '5')" in text
    assert "  --gin_file\n    Gin files. (repeatable)" in text
    assert "  --mode\n    Which mode. (one of a|b; default: 'a')" in text
    assert "stage" not in text


def test_help_is_recognised_only_before_parsing_in_its_spellings():
    assert command_line.help_requested(["prog", "--help"])
    assert command_line.help_requested(["prog", "--logdir=x", "-h"])
    assert not command_line.help_requested(["prog", "--helpfull"])  # absl's own
    assert not command_line.help_requested(["prog", "--logdir=--help"])
    assert command_line.program_name("/venv/bin/impala-train", "impala_tf.train") == \
        "impala-train"
    assert command_line.program_name("/src/impala_tf/train.py", "impala_tf.train") == \
        "python -m impala_tf.train"
