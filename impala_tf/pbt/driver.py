"""Runs a population of impala_tf runs on Ray Tune, evolved by the paper's rule.

`run_population` starts (or joins, with `address`) a Ray runtime, and runs
`EvolutionRule.population_size` members (`member.train_member`) as Tune trials under
`PaperPopulationBasedTraining`. Each member reserves a placement group: one bundle for its
learner (`Population.learner_cpus`, and `learner_gpus`) and one per actor process
(`actor_cpus` each, `Launcher.num_actors` of them), so Ray places a whole member on one node.
The members' initial hyperparameters are drawn from `Population.initial` (the paper's Table
D.1 ranges by default), seeded, or given (`Population.members`). The population's state is
Tune's experiment directory, `LOGDIR/population`: run the same command again and Tune resumes
every member from its newest checkpoint.
"""

import os
from typing import Optional, Sequence

from impala_tf.pbt.population import Population, search_space
from impala_tf.pbt.rule import EvolutionRule


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
    given = population.members
    if given is not None and len(given) != rule.population_size:
        raise ValueError(f"Population.members gives {len(given)} members; "
                         f"EvolutionRule.population_size is {rule.population_size}.")
    for name in rule.hyperparameters:
        if given is None and name not in population.initial:
            raise ValueError(f"EvolutionRule.hyperparameters evolves {name!r}, which "
                             "Population.initial gives no initial distribution.")
        if given is not None and any(name not in member for member in given):
            raise ValueError(f"EvolutionRule.hyperparameters evolves {name!r}, which a member "
                             "of Population.members lacks.")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    num_actors = Launcher().num_actors
    learner = {"CPU": population.learner_cpus}
    if population.learner_gpus:
        learner["GPU"] = population.learner_gpus
    bundles = [learner] + [{"CPU": population.actor_cpus}] * num_actors
    # STRICT_PACK: the actor processes are the learner's children, on its node.
    trainable = tune.with_resources(
        train_member, tune.PlacementGroupFactory(bundles, strategy="STRICT_PACK"))
    param_space = {"gin_files": list(gin_files), "gin_bindings": list(gin_bindings),
                   "hyperparameters": (tune.grid_search(given) if given is not None
                                       else search_space(population.initial)),
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
                num_samples=1 if given is not None else rule.population_size,
                scheduler=PaperPopulationBasedTraining(rule, seed=population.seed),
                search_alg=BasicVariantGenerator(random_state=population.seed),
                reuse_actors=False),
            run_config=tune.RunConfig(storage_path=storage, name=name, verbose=1,
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=4)))
    return tuner.fit()
