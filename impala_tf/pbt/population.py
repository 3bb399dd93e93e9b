"""A population of impala_tf runs on Ray Tune, evolved by the paper's rule.

`run_population` starts (or joins, with `address`) a Ray runtime, and runs
`EvolutionRule.population_size` members (`member.train_member`) as Tune trials under
`PaperPopulationBasedTraining`. Each member reserves a placement group: one bundle for its
learner (`learner_cpus`, and `learner_gpus`) and one per actor process (`actor_cpus` each,
`Launcher.num_actors` of them), so Ray places a whole member on one node. The members'
initial hyperparameters are drawn from `initial` (the paper's Table D.1 ranges by default),
seeded. The population's state is Tune's experiment directory, `LOGDIR/population`: run the
same command again and Tune resumes every member from its newest checkpoint.
"""

import os
from typing import Mapping, Optional, Sequence, Tuple

import gin

from impala_tf.pbt.rule import EvolutionRule

# The paper's initial distributions (Table D.1, DMLab): log-uniform learning rate and entropy
# cost, RMSProp epsilon one of four.
PAPER_INITIAL = {
    "make_optimizer.learning_rate": ("log_uniform", 5e-6, 5e-3),
    "TrainStep.entropy_cost": ("log_uniform", 5e-5, 1e-2),
    "make_optimizer.epsilon": ("choice", 1e-1, 1e-3, 1e-5, 1e-7),
}


def search_space(initial: Mapping[str, Tuple]):
    """Tune's domains for `initial` (name -> ('log_uniform', low, high) or ('choice', ...))."""
    from ray import tune
    space = {}
    for name, (kind, *values) in initial.items():
        if kind == "log_uniform":
            space[name] = tune.loguniform(*values)
        elif kind == "choice":
            space[name] = tune.choice(list(values))
        elif kind == "fixed":
            space[name] = values[0]
        else:
            raise ValueError(f"Population.initial[{name!r}]: {kind!r} is not 'log_uniform', "
                             "'choice' or 'fixed'.")
    return space


@gin.configurable
class Population:
    """How the population runs (module docstring).

    Args:
      initial: evolved hyperparameter -> its initial distribution.
      report_every_episodes: a member reports its score and a checkpoint this often.
      max_frames: each member's frame budget (its `--max_frames`).
      learner_cpus, learner_gpus, actor_cpus: a member's placement-group bundles.
      seed: seeds the initial draws and the rule's.
    """

    def __init__(self, initial: Mapping[str, Tuple] = PAPER_INITIAL,
                 report_every_episodes: int = 500, max_frames: float = 1e9,
                 learner_cpus: float = 1.0, learner_gpus: float = 0.0,
                 actor_cpus: float = 1.0, seed: int = 0):
        self.initial = dict(initial)
        self.report_every_episodes = int(report_every_episodes)
        self.max_frames = float(max_frames)
        self.learner_cpus, self.learner_gpus = float(learner_cpus), float(learner_gpus)
        self.actor_cpus = float(actor_cpus)
        self.seed = int(seed)


def run_population(logdir: str, gin_files: Sequence[str], gin_bindings: Sequence[str],
                   address: Optional[str] = None):
    """Runs the configured population until every member has spent its frames; returns
    Tune's `ResultGrid`. The gin config must be parsed already."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from impala_tf.launcher import Launcher
    from impala_tf.pbt.member import train_member
    from impala_tf.pbt.scheduler import PaperPopulationBasedTraining

    rule, population = EvolutionRule(), Population()
    missing = sorted(set(rule.hyperparameters) - set(population.initial))
    if missing:
        raise ValueError(f"EvolutionRule.hyperparameters evolves {missing}, which "
                         "Population.initial gives no initial distribution.")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    num_actors = Launcher().num_actors
    learner = {"CPU": population.learner_cpus}
    if population.learner_gpus:
        learner["GPU"] = population.learner_gpus
    bundles = [learner] + [{"CPU": population.actor_cpus}] * num_actors
    trainable = tune.with_resources(train_member, tune.PlacementGroupFactory(bundles))
    param_space = {"gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
                   "hyperparameters": search_space(population.initial),
                   "report_every_episodes": population.report_every_episodes,
                   "max_frames": population.max_frames, "last_step": None}
    storage = os.path.abspath(logdir)
    name = "population"
    if tune.Tuner.can_restore(os.path.join(storage, name)):
        tuner = tune.Tuner.restore(os.path.join(storage, name), trainable,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=rule.population_size,
                scheduler=PaperPopulationBasedTraining(rule, seed=population.seed),
                search_alg=BasicVariantGenerator(random_state=population.seed),
                reuse_actors=False),
            run_config=tune.RunConfig(storage_path=storage, name=name, verbose=1,
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=2)))
    return tuner.fit()
