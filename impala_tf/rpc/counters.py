"""The learner service's counts, bounded whatever clients send.

`ServiceCounters` counts accepted unrolls (in all and per actor id: ids are bounded by the
validator to the run's actors), rejected unrolls with their reasons (at most `MAX_REASONS`
distinct reason texts, the rest pooled under `OTHER_REASONS`), streams broken by the
transport and unauthenticated calls, and tallies the finished episodes reported since the
last `pop_episodes` as sums (`EpisodeTally`), not as a list: its size is set by the number
of levels (at most `MAX_LEVELS`, the rest pooled under `OTHER_LEVELS`), not by how many
episodes arrive.
"""

import collections
import threading
from typing import Dict, Optional, Sequence

from impala_tf.envs.base import EpisodeStats

MAX_REASONS = 64
OTHER_REASONS = "(other reasons)"
MAX_REASON_CHARS = 160
MAX_LEVELS = 256  # DMLab-30 has 30 levels, Atari-57 57 games
OTHER_LEVELS = "(other levels)"


def printable(text: str) -> str:
    """`text` with every character that is not printable ASCII escaped (`\\x1b`, `\\ud800`):
    rejection reasons quote what clients sent, and go to logs, gRPC status details and
    metrics, which a lone surrogate or a control character would break or garble."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c.isascii() and c.isprintable()
                   else c.encode("unicode_escape").decode("ascii") for c in text)


class EpisodeTally:
    """Sums over finished episodes: count, returns and frames, in all and per level."""

    def __init__(self):
        self.count = 0
        self.return_sum = 0.0
        self.frames_sum = 0
        self.level_counts: Dict[str, int] = {}
        self.level_return_sums: Dict[str, float] = {}

    def add(self, episode: EpisodeStats) -> None:
        self.count += 1
        self.return_sum += episode.episode_return
        self.frames_sum += episode.episode_frames
        level = episode.level
        if level not in self.level_counts and len(self.level_counts) >= MAX_LEVELS:
            level = OTHER_LEVELS
        self.level_counts[level] = self.level_counts.get(level, 0) + 1
        self.level_return_sums[level] = (self.level_return_sums.get(level, 0.0)
                                         + episode.episode_return)

    @property
    def return_mean(self) -> Optional[float]:
        return self.return_sum / self.count if self.count else None

    @property
    def length_mean(self) -> Optional[float]:
        return self.frames_sum / self.count if self.count else None

    def level_return_means(self) -> Dict[str, float]:
        return {level: self.level_return_sums[level] / n
                for level, n in sorted(self.level_counts.items())}


class ServiceCounters:
    """Thread-safe counts; see the module docstring."""

    def __init__(self):
        self._lock = threading.Lock()
        self.accepted = 0
        self.accepted_by_actor: Dict[int, int] = collections.Counter()
        self.rejected = 0
        self.broken_streams = 0
        self.unauthenticated = 0
        self.idle_closed = 0  # calls closed after their idle deadline
        self.refused_calls = 0  # calls refused a slot (their actor id's or the pool's)
        self.rejected_reasons: Dict[str, int] = collections.Counter()
        self._episodes = EpisodeTally()

    def accept(self, episodes: Sequence[EpisodeStats], actor_id: int = -1) -> None:
        with self._lock:
            self.accepted += 1
            self.accepted_by_actor[actor_id] += 1
            for episode in episodes:
                self._episodes.add(episode)

    def reject(self, reason: str) -> str:
        """Counts a rejection; returns its reason as it was kept (printable, cut short)."""
        reason = printable(reason[:MAX_REASON_CHARS])[:MAX_REASON_CHARS]
        kept = reason
        with self._lock:
            self.rejected += 1
            if reason not in self.rejected_reasons and len(self.rejected_reasons) >= MAX_REASONS:
                reason = OTHER_REASONS
            self.rejected_reasons[reason] += 1
        return kept

    def by_actor(self) -> Dict[str, int]:
        """Accepted unrolls per actor id (JSON-friendly keys), a consistent snapshot."""
        with self._lock:
            return {str(k): v for k, v in sorted(self.accepted_by_actor.items())}

    def deny(self) -> None:
        with self._lock:
            self.unauthenticated += 1

    def idle(self) -> None:
        with self._lock:
            self.idle_closed += 1

    def refuse_call(self) -> None:
        with self._lock:
            self.refused_calls += 1

    def broken(self) -> None:
        with self._lock:
            self.broken_streams += 1

    def pop_episodes(self) -> EpisodeTally:
        """The episodes reported since the last call, summed."""
        with self._lock:
            episodes, self._episodes = self._episodes, EpisodeTally()
        return episodes
