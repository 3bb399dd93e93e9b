"""A member's score since its last evolution step, from its metrics records.

  mean_return          the mean return of its episodes (one game, Catch);
  dmlab30_mean_capped  the mean over DMLab-30 levels of the human-normalised score capped at
                       100%, as a fraction (the paper's PBT score on DMLab-30);
  atari_mean_capped    the same over Atari games (the multi-task Atari-57 population's).

The normalised scores are fractions (0.05 is 5%), so `EvolutionRule.copy_margin = 0.05` is the
paper's 5% absolute. A level's mean is over the episodes it finished since the step; levels
not yet played do not count.
"""

from typing import Dict, Mapping, Optional

from impala_tf import scores

SCORES = ("mean_return", "dmlab30_mean_capped", "atari_mean_capped")


class ScoreKeeper:
    """Sums a member's episodes, in all and per level, from metrics records."""

    def __init__(self, kind: str = "mean_return"):
        if kind not in SCORES:
            raise ValueError(f"Population.score = {kind!r}: expected one of {SCORES}.")
        self.kind = kind
        self.episodes, self.return_sum = 0, 0.0
        self.level_episodes: Dict[str, int] = {}
        self.level_sums: Dict[str, float] = {}

    def add(self, record: Mapping) -> None:
        """Adds one metrics record's episodes (`episodes`, `episode_return_mean`, and per
        level `episodes_per_level`, `episode_return_per_level`)."""
        episodes = int(record.get("episodes") or 0)
        if not episodes or record.get("episode_return_mean") is None:
            return
        self.episodes += episodes
        self.return_sum += episodes * float(record["episode_return_mean"])
        per_level = record.get("episodes_per_level") or {}
        means = record.get("episode_return_per_level") or {}
        for level, count in per_level.items():
            if level in means and means[level] is not None:
                name = level.rsplit("/", 1)[-1]  # DMLab's contributed/dmlab30/ prefix
                self.level_episodes[name] = self.level_episodes.get(name, 0) + int(count)
                self.level_sums[name] = (self.level_sums.get(name, 0.0)
                                         + int(count) * float(means[level]))

    def score(self) -> Optional[float]:
        """The score (module docstring), None before any episode."""
        if not self.episodes:
            return None
        if self.kind == "mean_return":
            return self.return_sum / self.episodes
        level_means = {name: self.level_sums[name] / n for name, n in self.level_episodes.items()}
        if not level_means:
            return None
        references = (scores.dmlab30_references() if self.kind == "dmlab30_mean_capped"
                      else scores.atari_references())
        unknown = sorted(set(level_means) - set(references))
        if unknown:
            raise ValueError(f"Population.score = {self.kind!r}: no human and random scores "
                             f"for {unknown}.")
        capped = [min(100.0, scores.human_normalized(mean, references[name]))
                  for name, mean in level_means.items()]
        return sum(capped) / len(capped) / 100.0
