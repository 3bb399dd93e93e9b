"""The paper's population-based training rule (IMPALA, Appendix F), without any engine.

A member evolves once it is past the burn-in (`burn_in_frames` of its own) and has reported
`episodes_per_step` episode returns since its last step. It is compared with one other member
drawn at random: if the other's score (DMLab-30 and multi-task Atari: the mean capped
human-normalised score; one game: the mean return) is more than `copy_margin` higher, in the
score's own units, it copies the other's weights and hyperparameters. Then, copied or not, each
evolved hyperparameter is multiplied by `factor` or by 1 / `factor`, each with probability
`perturb_probability`, and left as it is otherwise.

Ray Tune's own `PopulationBasedTraining` differs: it exploits by quantiles (the bottom quarter
copies the top quarter), explores only after copying, and counts burn-in and interval in one
unit. `impala_tf.pbt.scheduler` puts this rule in Tune's place.
"""

from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import gin
import numpy as np

# The paper's evolved hyperparameters, as impala_tf's gin bindings (Appendix F; the gradient
# clipping threshold on Atari only).
DMLAB_HYPERPARAMETERS = ("make_optimizer.learning_rate", "TrainStep.entropy_cost",
                         "make_optimizer.epsilon")
ATARI_HYPERPARAMETERS = DMLAB_HYPERPARAMETERS + ("TrainStep.max_grad_norm",)


class Step(NamedTuple):
    """One evolution step's outcome for a member: the donor it copied (None: none), the
    hyperparameters it goes on with, and the factor each was multiplied by (1.0: kept)."""

    donor: Optional[str]
    hyperparameters: Dict[str, float]
    factors: Dict[str, float]


@gin.configurable
class EvolutionRule:
    """The rule (module docstring); every number a gin setting, the paper's by default.

    Args:
      population_size: members (24 in the paper).
      burn_in_frames: a member's own environment frames before its first step (2e7).
      episodes_per_step: episode returns a member reports between steps (5,000).
      copy_margin: how much higher, in the score's units, the other's score must be for a
        copy (0.05: 5% of human-normalised score, absolute).
      factor: a perturbation's factor (1.2).
      perturb_probability: the probability of each direction (1/3 up, 1/3 down, 1/3 kept).
      hyperparameters: the gin bindings evolved.
    """

    def __init__(self, population_size: int = 24, burn_in_frames: float = 2e7,
                 episodes_per_step: int = 5000, copy_margin: float = 0.05,
                 factor: float = 1.2, perturb_probability: float = 1 / 3,
                 hyperparameters: Sequence[str] = DMLAB_HYPERPARAMETERS):
        if population_size < 2:
            raise ValueError(f"EvolutionRule.population_size = {population_size}: a member needs "
                             "another to compare with.")
        if not 0 <= perturb_probability <= 0.5:
            raise ValueError(f"EvolutionRule.perturb_probability = {perturb_probability}: each "
                             "of the two directions, so at most 0.5.")
        if factor <= 1:
            raise ValueError(f"EvolutionRule.factor = {factor}: must be above 1.")
        self.population_size = int(population_size)
        self.burn_in_frames = float(burn_in_frames)
        self.episodes_per_step = int(episodes_per_step)
        self.copy_margin = float(copy_margin)
        self.factor = float(factor)
        self.perturb_probability = float(perturb_probability)
        self.hyperparameters = tuple(hyperparameters)

    def ready(self, frames: float, episodes_since_step: int) -> bool:
        """Whether a member with these counts takes an evolution step now."""
        return frames >= self.burn_in_frames and episodes_since_step >= self.episodes_per_step

    def donor(self, member: str, scores: Mapping[str, float],
              rng: np.random.Generator) -> Tuple[str, bool]:
        """(the other member drawn, whether `member` copies it). `scores`: every member's
        score with one; `member`'s own included."""
        others = sorted(name for name in scores if name != member)
        if not others:
            raise ValueError(f"member {member!r} has no other member with a score to compare "
                             "with")
        other = others[int(rng.integers(len(others)))]
        return other, scores[other] > scores[member] + self.copy_margin

    def explore(self, hyperparameters: Mapping[str, float], rng: np.random.Generator
                ) -> Tuple[Dict[str, float], Dict[str, float]]:
        """(the evolved hyperparameters, each one's factor: `factor`, 1 / `factor` or 1)."""
        new, factors = dict(hyperparameters), {}
        for name in self.hyperparameters:
            if name not in hyperparameters:
                raise KeyError(f"hyperparameter {name!r} is evolved (EvolutionRule."
                               "hyperparameters) but the member has no value for it")
            draw = rng.random()
            if draw < self.perturb_probability:
                factors[name] = self.factor
            elif draw < 2 * self.perturb_probability:
                factors[name] = 1 / self.factor
            else:
                factors[name] = 1.0
            new[name] = hyperparameters[name] * factors[name]
        return new, factors

    def step(self, member: str, scores: Mapping[str, float],
             hyperparameters: Mapping[str, Mapping[str, float]],
             rng: np.random.Generator) -> Step:
        """One evolution step for `member`: copy (or not), then explore."""
        other, copies = self.donor(member, scores, rng)
        start = hyperparameters[other] if copies else hyperparameters[member]
        new, factors = self.explore(start, rng)
        return Step(other if copies else None, new, factors)
