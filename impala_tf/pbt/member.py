"""One member of a population: a whole impala_tf run (its learner and its actor processes, in
either inference mode) as a Ray Tune function trainable.

The member's config (`member_config`) holds its gin files, its fixed bindings and its evolved
hyperparameters (gin bindings too: `make_optimizer.learning_rate` ...). It trains in its own
logdir (`run/` in the trial's folder of the population's storage), and every
`report_every_episodes` finished episodes it saves a checkpoint and reports to Tune:

  env_frames            its own environment frames (burn-in counts these);
  episodes_since_step   episodes since its last evolution step, i.e. since it (re)started
                        (the rule's 5,000);
  score                 those episodes' score (`Population.score`: the mean return, or
                        the mean capped human-normalised score); the rule compares members
                        by it;
  episode_return_mean   the last log record's, for the curves;
  checkpoint_dir        its run's checkpoint folder (a step that keeps its weights
                        restarts it from its own newest checkpoint there).

When Tune starts it from a checkpoint (its own after a pause, or another member's after a
copy), the checkpoint's files replace its logdir's checkpoints, so the learner resumes from
them, and the start is recorded in `run/pbt.jsonl` with the hyperparameters it runs with and
the step that led there (`last_step` in the config: the donor, or none, and each factor).
"""

import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

EVENTS_FILE = "pbt.jsonl"


def member_config(gin_files: Sequence[str], gin_bindings: Sequence[str],
                  hyperparameters: Dict[str, float], report_every_episodes: int,
                  max_frames: float) -> Dict:
    """A member's Tune config."""
    return {"gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
            "hyperparameters": dict(hyperparameters),
            "report_every_episodes": int(report_every_episodes),
            "max_frames": float(max_frames), "last_step": None}


def bindings(config: Dict) -> List[str]:
    """The member's gin bindings: the fixed ones, then its hyperparameters (which win)."""
    return list(config["gin_bindings"]) + [f"{name} = {value!r}"
                                           for name, value in config["hyperparameters"].items()]


def record_event(logdir: str, event: Dict) -> None:
    with open(os.path.join(logdir, EVENTS_FILE), "a") as f:
        f.write(json.dumps(dict(event, time=time.time())) + "\n")


class _Reporter:
    """Scores the episodes of each metrics record since the member (re)started, which is
    since its last evolution step (a step restarts it), and reports to Tune with a
    checkpoint every `every` episodes."""

    def __init__(self, every: int, checkpoint_dir: str, score: str):
        from impala_tf.pbt.score import ScoreKeeper
        self.every, self.checkpoint_dir = every, checkpoint_dir
        self.keeper = ScoreKeeper(score)
        self.reported_at = 0  # episodes at the last report
        self.reports = 0

    def __call__(self, record: Dict, process) -> None:
        from ray import tune
        self.keeper.add(record)
        score = self.keeper.score()
        if score is None or self.keeper.episodes - self.reported_at < self.every:
            return
        process.learner.save()
        metrics = {"env_frames": int(record["env_frames"]),
                   "episodes_since_step": self.keeper.episodes, "score": score,
                   "episode_return_mean": record.get("episode_return_mean"),
                   "learner_steps": int(record["learner_steps"]),
                   "checkpoint_dir": self.checkpoint_dir}
        self.reported_at, self.reports = self.keeper.episodes, self.reports + 1
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(self.checkpoint_dir))


def _trial_storage_dir() -> str:
    """The trial's folder in the population's storage (`--logdir`), which every node reaches:
    the member writes its run there directly. (Tune's own trial folder is a working copy on
    the member's node, copied to storage at each report; a restored population starts a new,
    empty one, whose copy would overwrite the run's history.)"""
    from ray import tune
    storage = tune.get_context().get_storage()
    if type(storage.storage_filesystem).__name__ != "LocalFileSystem":
        raise ValueError(f"the population's --logdir ({storage.storage_path}) must be a folder "
                         "every node mounts (a local disk on one machine, NFS on a cluster): "
                         "members write their runs into it directly.")
    return storage.trial_fs_path


def train_member(config: Dict) -> None:
    """The Tune trainable: trains this member until `max_frames` (module docstring)."""
    from ray import tune

    from impala_tf import config as gin_config
    from impala_tf import launcher
    from impala_tf.learning import checkpoints

    logdir = os.path.join(_trial_storage_dir(), "run")
    os.makedirs(logdir, exist_ok=True)
    checkpoint_dir = checkpoints.checkpoint_dir(logdir)
    start = tune.get_checkpoint()
    if start is not None:  # its own after a pause, or a donor's after a copy
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        start.to_directory(checkpoint_dir)
    import ray
    record_event(logdir, {"event": "start", "from_checkpoint": start.path if start else None,
                          "hyperparameters": config["hyperparameters"],
                          "last_step": config.get("last_step"),
                          "trial_id": tune.get_context().get_trial_id(),
                          "node_id": ray.get_runtime_context().get_node_id()})
    gin_config.parse_config(config["gin_files"], bindings(config))
    from impala_tf.pbt.population import Population
    reporter = _Reporter(config["report_every_episodes"], checkpoint_dir, Population().score)
    launcher.run_learner(logdir, "127.0.0.1:0", spawn_actors=True,
                         gin_files=config["gin_files"], gin_bindings=bindings(config),
                         max_frames=config["max_frames"], on_record=reporter)
