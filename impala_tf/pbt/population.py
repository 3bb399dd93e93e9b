"""How a population runs (`Population`, gin) and its members' initial hyperparameters.

Registered with gin in every process (`config`) without importing Ray: `driver` runs it.
"""

from typing import Mapping, Optional, Sequence, Tuple

import gin

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
      members: each member's initial hyperparameters, given instead of drawn from `initial`
        (one dict per member: `EvolutionRule.population_size` of them).
      score: what members are compared by (`score.SCORES`): 'mean_return' (one game),
        'dmlab30_mean_capped' or 'atari_mean_capped' (multi-task).
    """

    def __init__(self, initial: Mapping[str, Tuple] = PAPER_INITIAL,
                 report_every_episodes: int = 500, max_frames: float = 1e9,
                 learner_cpus: float = 1.0, learner_gpus: float = 0.0,
                 actor_cpus: float = 1.0, seed: int = 0,
                 members: Optional[Sequence[Mapping[str, float]]] = None,
                 score: str = "mean_return"):
        self.initial = dict(initial)
        self.members = [dict(m) for m in members] if members is not None else None
        self.report_every_episodes = int(report_every_episodes)
        self.max_frames = float(max_frames)
        self.learner_cpus, self.learner_gpus = float(learner_cpus), float(learner_gpus)
        self.actor_cpus = float(actor_cpus)
        self.seed = int(seed)
        self.score = score
