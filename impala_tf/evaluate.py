"""Evaluates a checkpoint under the paper's protocol and prints the scores table
(`impala_tf.scores` scores the episodes).

    python -m impala_tf.evaluate --logdir=DIR [--num_episodes=30]
    python -m impala_tf.evaluate --checkpoint=DIR/checkpoints/ckpt-1000 --gin_file=atari/experts_shallow.gin

With `--logdir` the latest checkpoint and, unless `--gin_file` is given, the run's
`operative_config.gin` are used. Writes `evaluation.csv` and `evaluation.json` next to the
checkpoints (or to `--out_dir`). Multi-task runs are evaluated on every task: DMLab-30
(`make_dmlab.dmlab30 = True`) on its 30 test levels, with the mean capped human-normalised
score; multi-task Atari (`make_environment.kind = 'atari_multitask'`) on each of its games,
with the median and mean human-normalised score. Each summary is printed beside the paper's
figures for the same tasks (Tables B.1 and C.1). Other runs play the configured game or level.

`run_episodes` plays rounds in which every one of the K environments starts afresh and only
its first finished episode counts (taking the first N episodes to finish would favour short
ones). Atari is evaluated on whole games with up to 30 no-op starts, the 108,000-frame cap
and the unclipped score; DMLab on the test levels with the reference mixer seed
(`make_environment(mode='eval')` sets both up). This module imports no TensorFlow until it
plays (`--help` answers at once).
"""

import csv
import dataclasses
import functools
import json
import os
from typing import List

import numpy as np
from absl import app, flags

from impala_tf import command_line, config, gin_utils, quiet, scores
from impala_tf.envs.base import BatchedEnv, EpisodeStats

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


def run_episodes(policy, env: BatchedEnv, num_episodes: int) -> List[EpisodeStats]:
    """Plays `policy` (an `acting.policy.BatchedPolicy`) until `num_episodes` episodes
    finished, one per environment per round."""
    results: List[EpisodeStats] = []
    k = env.num_envs
    while len(results) < num_episodes:
        timestep = env.reset()
        env.pop_finished_episodes()
        state = policy.initial_state(k)
        prev_actions = np.zeros(k, np.int32)
        done = np.zeros(k, bool)
        while not done.all():
            step, state = policy(prev_actions, timestep, state)
            timestep = env.step(step.actions)
            prev_actions = step.actions
            for episode in env.pop_finished_episodes():
                if not done[episode.env_index]:
                    done[episode.env_index] = True
                    results.append(episode)
    return results[:num_episodes]


def evaluation_environments(num_envs: int, seed: int):
    """(environment makers, kind, multitask) for the configured experiment: one maker per
    task, each building `num_envs` environments of it in evaluation mode (DMLab-30: its 30
    distinct test levels; multi-task Atari: each game), else one of the configured game or
    level. Makers, so that one task's environments exist at a time."""
    from impala_tf.envs import dmlab as dmlab_env
    from impala_tf.envs.atari_multitask import AtariMultiTaskEnv, configured_games
    from impala_tf.envs.factory import make_environment
    kind = gin_utils.bound_value("make_environment.kind", "atari")
    dmlab30 = kind == "dmlab" and gin_utils.bound_value("make_dmlab.dmlab30", False)
    if dmlab30:  # dmlab30=False: each batch its own level, not the actor's assignment
        makers = [functools.partial(dmlab_env.make_dmlab, num_envs, seed=seed, level=level,
                                    mode="test", dmlab30=False)
                  for level in dmlab_env.dmlab30_level_names("test")]
    elif kind == "atari_multitask":  # the task ids stay those of the configured game list
        games = configured_games()
        makers = [functools.partial(AtariMultiTaskEnv, num_envs, games=games, seed=seed,
                                    env_games=[game] * num_envs, mode="eval")
                  for game in games]
    else:
        makers = [functools.partial(make_environment, num_envs, seed=seed, mode="eval")]
    return makers, kind, dmlab30 or kind == "atari_multitask"


def evaluate_checkpoint(checkpoint_path: str, num_episodes: int, num_envs: int, greedy: bool,
                        seed: int):
    """Returns (rows, summary, kind, paper summary over the same tasks, its label) for the
    configured experiment."""
    from impala_tf.acting.policy import BatchedPolicy
    from impala_tf.learning import checkpoints
    from impala_tf.networks import build_agent
    from impala_tf.specs import num_tasks, tensor_specs
    makers, kind, multitask = evaluation_environments(num_envs, seed)
    episodes, agent, policy = [], None, None
    for make in makers:
        env = make()
        if agent is None:
            spec = env.observation_spec()
            agent = build_agent(tensor_specs(spec), env.action_spec().num_values,
                                         num_tasks(spec))
            checkpoints.restore_agent(agent, checkpoint_path)
            policy = BatchedPolicy(agent, greedy=greedy, seed=seed)
        episodes += run_episodes(policy, env, num_episodes)
        env.close()
    column, label = scores.paper_column(kind, multitask, agent.torso_name)
    scored_as = "atari" if kind == "atari_multitask" else kind
    rows = scores.score_rows(episodes, scored_as, column)
    return (rows, scores.summary(rows, scored_as), kind,
            scores.paper_summary(rows, scored_as), label)


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
    path, out_dir, gin_files = _resolve_inputs()
    config.parse_config(gin_files, FLAGS.gin_bindings)
    rows, summary_values, kind, paper_values, paper_label = evaluate_checkpoint(
        path, FLAGS.num_episodes, FLAGS.num_envs, FLAGS.greedy, FLAGS.seed)
    print(f"checkpoint: {path} ({kind}, {FLAGS.num_episodes} episodes each)")
    print(f"paper column: {paper_label}")
    print(scores.format_table(rows, summary_values, paper_values, paper_label))
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
