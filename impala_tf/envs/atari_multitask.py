"""Several Atari games in one actor, as the paper's multi-task Atari agent (Section 5.3.2,
Atari-57) plays them.

Each of the K environments plays its own game; environments of the same game are stepped
together by one ALE vector interface (`AtariBatchedEnv`), and the agent sees one batch of K
observations, so one batched inference serves every game. All games share the full 18-action
set (`full_action_space=True`), the set multi-task Atari agents use (`full_action_map`:
actions a ROM ignores play as their nearest legal one). Environment j of actor i
plays game `(i * K + j) mod len(games)` (`envs.base.levels_for_environments`), so any N
actors of K environments cover min(N * K, len(games)) games.

Observations add `task`: int32 `[]`, the game's index in `games` (the PopArt statistics and
the per-task value heads read it; the policy does not). Scored episodes carry the game's name
as their level, so the learner's metrics.jsonl has `episode_return_per_level` keyed by game.
"""

from typing import Dict, List, Optional, Sequence

import gin
import numpy as np
from dm_env import specs

from impala_tf.envs.atari import AtariBatchedEnv, protocol_settings, resolve_game
from impala_tf.envs.base import (BatchedEnv, BatchedTimeStep, EpisodeStats,
                                 levels_for_environments, task_coverage)
from impala_tf.gin_utils import configured_value

NUM_FULL_ACTIONS = 18
# ALE's 18 actions in their numbering (ale_py.Action): the multi-task agent's action space.
FULL_ACTION_NAMES = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT",
    "DOWNLEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE",
    "DOWNRIGHTFIRE", "DOWNLEFTFIRE")


def full_action_map(action_names: Sequence[str]) -> np.ndarray:
    """int64 `[18]`: for each of ALE's 18 actions, its index in a game's action set. A game
    whose ROM ignores a button has fewer legal actions (ALE 0.12 gives Skiing 9): there an
    action with FIRE plays as the same move without it, and anything else missing as NOOP."""
    index = {name: i for i, name in enumerate(action_names)}
    mapped = []
    for name in FULL_ACTION_NAMES:
        without_fire = name.replace("FIRE", "") or "NOOP"
        mapped.append(index.get(name, index.get(without_fire, index["NOOP"])))
    return np.array(mapped, np.int64)


def atari57_games() -> List[str]:
    """The 57 games of the paper's Atari-57 (the human/random reference table's rows)."""
    from impala_tf import scores  # the score tables are data; imported here to stay light

    return sorted(scores.atari_references())


def resolve_games(games: Sequence[str]) -> List[str]:
    """Game names -> ROM names (typos name the nearest game); `['atari57']` -> all 57.
    Duplicates are an error: each game is one task."""
    if list(games) == ["atari57"]:
        return atari57_games()
    resolved = [resolve_game(g) for g in games]
    duplicates = sorted({g for g in resolved if resolved.count(g) > 1})
    if duplicates:
        raise ValueError(f"Games listed more than once: {duplicates}.")
    if not resolved:
        raise ValueError("A multi-task Atari run needs at least one game.")
    return resolved


def multitask_coverage(num_actors: int, num_envs: int, num_games: int) -> str:
    """One line on how many of the games `num_actors` actors of `num_envs` environments play
    (`base.task_coverage`)."""
    return task_coverage("Atari multi-task", num_actors, num_envs, num_games, "games")


def configured_games() -> List[str]:
    """`AtariMultiTaskEnv.games` as the parsed gin config sets it (else its default),
    resolved: the task list, in task-id order."""

    return resolve_games(configured_value(AtariMultiTaskEnv, "games"))


@gin.configurable
class AtariMultiTaskEnv(BatchedEnv):
    """K environments, each playing one of several Atari games, with the full action set.

    Args:
      num_envs: K.
      games: the task list (ROM names or `Pong`-style names), or `['atari57']` for all 57.
        Its order defines the task ids.
      seed: base seed; game group g's environments are seeded from `seed + first index`.
      actor_index: i, for the assignment `(i * K + j) mod len(games)`.
      env_games: instead of the assignment, the game of each environment (evaluation).
      mode: `train` (a lost life ends the training episode) or `eval` (whole games, each
        after 1 to 30 no-op actions: the paper's protocol, as `AtariBatchedEnv` in eval).
      num_threads: ALE threads per game group (1: the groups are small).
    """

    def __init__(
        self,
        num_envs: int,
        games: Sequence[str] = ("atari57",),
        seed: int = 0,
        actor_index: int = 0,
        env_games: Optional[Sequence[str]] = None,
        mode: str = "train",
        num_threads: int = 1,
    ):
        protocol = protocol_settings(mode)
        self.games = resolve_games(games)
        num_envs = int(num_envs)
        if env_games is None:
            self.env_games = levels_for_environments(actor_index, num_envs, self.games)
        else:
            self.env_games = [resolve_game(g) for g in env_games]
            unknown = sorted(set(self.env_games) - set(self.games))
            if unknown or len(self.env_games) != num_envs:
                raise ValueError(f"env_games must name {num_envs} games from {self.games}; "
                                 f"got {list(env_games)}.")
        self._num_envs = num_envs
        self.task_ids = np.array([self.games.index(g) for g in self.env_games], np.int32)
        # One ALE vector interface per distinct game, over the environments that play it.
        groups: Dict[str, List[int]] = {}
        for j, game in enumerate(self.env_games):
            groups.setdefault(game, []).append(j)
        self._groups = {g: np.array(idx, np.int64) for g, idx in groups.items()}
        self._envs = {
            game: AtariBatchedEnv(len(idx), game=game, seed=int(seed) + int(idx[0]),
                                  full_action_space=True, num_threads=int(num_threads),
                                  **protocol)
            for game, idx in self._groups.items()
        }
        self._action_maps = {game: full_action_map(env.action_meanings)
                             for game, env in self._envs.items()}
        first = next(iter(self._envs.values()))
        self._frame_spec = first.observation_spec()["frame"]
        self._frames_per_step = first.frames_per_step
        self._stacked = first.stacked_observations

    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def frames_per_step(self) -> int:
        return self._frames_per_step

    @property
    def stacked_observations(self):
        return dict(self._stacked)

    @property
    def levels(self) -> List[str]:
        """Each environment's game."""
        return list(self.env_games)

    def observation_spec(self):
        return {
            "frame": self._frame_spec,
            "task": specs.BoundedArray((), np.int32, 0, len(self.games) - 1, name="task"),
        }

    def action_spec(self):
        return specs.DiscreteArray(NUM_FULL_ACTIONS, name="action")

    def _gather(self, timesteps: Dict[str, BatchedTimeStep]) -> BatchedTimeStep:
        k = self._num_envs
        step_type = np.zeros(k, np.int8)
        reward = np.zeros(k, np.float32)
        discount = np.zeros(k, np.float32)
        frame = np.zeros((k,) + tuple(self._frame_spec.shape), np.uint8)
        for game, idx in self._groups.items():
            t = timesteps[game]
            step_type[idx] = t.step_type
            reward[idx] = t.reward
            discount[idx] = t.discount
            frame[idx] = t.observation["frame"]
        return BatchedTimeStep(step_type, reward, discount,
                               {"frame": frame, "task": self.task_ids.copy()})

    def reset(self) -> BatchedTimeStep:
        return self._gather({game: env.reset() for game, env in self._envs.items()})

    def step(self, actions: np.ndarray) -> BatchedTimeStep:
        actions = np.asarray(actions)
        if actions.shape != (self._num_envs,):
            raise ValueError(f"Expected actions of shape ({self._num_envs},), got {actions.shape}.")
        if actions.min(initial=0) < 0 or actions.max(initial=0) >= NUM_FULL_ACTIONS:
            raise ValueError(f"Actions must be in [0, {NUM_FULL_ACTIONS}), got {actions}.")
        return self._gather({
            game: env.step(self._action_maps[game][actions[self._groups[game]]])
            for game, env in self._envs.items()})

    def pop_finished_episodes(self) -> List[EpisodeStats]:
        finished = []
        for game, env in self._envs.items():
            for episode in env.pop_finished_episodes():
                finished.append(EpisodeStats(episode.episode_return, episode.episode_frames,
                                             game, int(self._groups[game][episode.env_index])))
        return finished

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
