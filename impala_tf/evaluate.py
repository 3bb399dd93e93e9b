"""Evaluates a checkpoint under the paper's protocol and prints the scores table.

    python -m impala_tf.evaluate --logdir=DIR [--num_episodes=30]
    python -m impala_tf.evaluate --checkpoint=DIR/checkpoints/ckpt-1000 --gin_file=atari/experts_shallow.gin

With `--logdir` the latest checkpoint and, unless `--gin_file` is given, the run's
`operative_config.gin` are used. Writes `evaluation.csv` and `evaluation.json` next to the
checkpoints (or to `--out_dir`). Multi-task runs are evaluated on every task: DMLab-30
(`make_dmlab.dmlab30 = True`) on its 30 test levels, with the mean capped human-normalised
score; multi-task Atari (`make_environment.kind = 'atari_multitask'`) on each of its games,
with the median and mean human-normalised score. Each summary is printed beside the paper's
figures for the same tasks (Tables B.1 and C.1). Other runs play the configured game or level.
"""

import csv
import dataclasses
import json
import os

from absl import app, flags

from impala_tf import command_line, config, quiet

FLAGS = flags.FLAGS


def define_flags() -> None:
    quiet.define_verbose_flag()
    flags.DEFINE_string("logdir", None, "Run directory: its latest checkpoint is evaluated.")
    flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (instead of --logdir).")
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files (default: the run's "
                              "operative_config.gin).")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_integer("num_episodes", 30, "Episodes per game or level (the paper: 200 "
                         "on Atari, 500 per DMLab level).")
    flags.DEFINE_integer("num_envs", 8, "Environments played in parallel.")
    flags.DEFINE_boolean("greedy", False, "Act with the most probable action.")
    flags.DEFINE_integer("seed", 1, "Seed for environments and action sampling.")
    flags.DEFINE_string("out_dir", None, "Where to write evaluation.csv/json.")


def _resolve_inputs():
    from impala_tf.learning import checkpoints
    if bool(FLAGS.logdir) == bool(FLAGS.checkpoint):
        raise app.UsageError("Give exactly one of --logdir and --checkpoint.")
    if FLAGS.logdir:
        path = checkpoints.latest_checkpoint(FLAGS.logdir)
        if path is None:
            raise app.UsageError(f"No checkpoint under {checkpoints.checkpoint_dir(FLAGS.logdir)}.")
        out_dir = FLAGS.out_dir or FLAGS.logdir
        operative = os.path.join(FLAGS.logdir, "operative_config.gin")
    else:
        path = FLAGS.checkpoint
        out_dir = FLAGS.out_dir or os.path.dirname(os.path.dirname(os.path.abspath(path)))
        operative = os.path.join(out_dir, "operative_config.gin")
    gin_files = FLAGS.gin_file or ([operative] if os.path.exists(operative) else [])
    if not gin_files:
        raise app.UsageError("No --gin_file given and no operative_config.gin found.")
    return path, out_dir, gin_files


def main(argv) -> None:
    del argv
    quiet.import_tensorflow()
    from impala_tf import evaluation  # TensorFlow: after the flags (help answers without it)
    path, out_dir, gin_files = _resolve_inputs()
    config.parse_config(gin_files, FLAGS.gin_bindings)
    rows, summary_values, kind, paper_values, paper_label = evaluation.evaluate_checkpoint(
        path, FLAGS.num_episodes, FLAGS.num_envs, FLAGS.greedy, FLAGS.seed)
    print(f"checkpoint: {path} ({kind}, {FLAGS.num_episodes} episodes each)")
    print(f"paper column: {paper_label}")
    print(evaluation.format_table(rows, summary_values, paper_values, paper_label))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "evaluation.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fld.name for fld in dataclasses.fields(rows[0])])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)
    with open(os.path.join(out_dir, "evaluation.json"), "w") as f:
        json.dump({"checkpoint": path, "kind": kind, "num_episodes": FLAGS.num_episodes,
                   "rows": [dataclasses.asdict(r) for r in rows], "summary": summary_values,
                   "paper": {"column": paper_label, "summary": paper_values}},
                  f, indent=2)
    print(f"wrote {os.path.join(out_dir, 'evaluation.csv')} and evaluation.json beside it")


def cli() -> None:
    """The console script's entry point (see pyproject.toml)."""
    command_line.run(main, __doc__, define_flags, "impala_tf.evaluate")


if __name__ == "__main__":
    cli()
