"""Atari through ale-py's native vectorised interface (C++ preprocessing and threads), with
the paper's preprocessing (Table G.1):

  84x84 grey frames, max-pooled over the last 2 emulator frames, action repeat 4, a stack of
  the last 4 frames, up to 30 no-op starts, episodes capped at 108,000 frames, the minimal
  action set, sticky actions off, rewards unclipped (clipping happens in the loss).
  In training a lost life ends the episode (LAST, discount 0) but not the game: the next
  step is a no-op that starts the next training episode (FIRST), as the DQN-era
  `EpisodicLifeEnv` did. Scored episodes (`pop_finished_episodes`) are whole games.

Frames are returned as uint8 `[K, 84, 84, 4]` (height, width, stack).
"""

import difflib
import os
import re
from typing import List, Optional

import gin
import numpy as np
from dm_env import specs

from impala_tf.envs.base import FIRST, LAST, MID, BatchedEnv, BatchedTimeStep, EpisodeStats
from impala_tf.frames import stack_into, word_view

try:  # ale-py >= 0.11 ships the vector interface in its native module.
    from ale_py import roms as ale_roms
    from ale_py._ale_py import ALEVectorInterface
except ImportError as error:  # pragma: no cover - exercised only without ale-py
    ALEVectorInterface = None
    _IMPORT_ERROR = error

NOOP = 0

# Set by the launcher in each actor process it starts: how many actor processes share this
# host's cores (unset: 1, an actor alone on its host).
ACTORS_ON_HOST_VARIABLE = "IMPALA_TF_ACTORS_ON_HOST"


def default_ale_threads(num_envs: int) -> int:
    """ALE worker threads for one actor process: its share of the cores this process may use
    (`os.sched_getaffinity`, shared by `$IMPALA_TF_ACTORS_ON_HOST` actors), at least one and
    at most one per environment. With many actors per host, one thread each: on 16 cores,
    an actor's 8 environments cost 145-154 us of CPU a frame at 1 or 2 threads and 166-171 us
    at ALE's default (8). On 2 cores with 2 actors, 1 thread and ALE's default were level
    end to end (docs/performance.md)."""
    raw = os.environ.get(ACTORS_ON_HOST_VARIABLE, "1")
    try:
        actors = int(raw)
    except ValueError:
        actors = 0
    if actors < 1:
        raise ValueError(f"{ACTORS_ON_HOST_VARIABLE}={raw!r}: expected a whole number >= 1 "
                         "(the actor processes sharing this host)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(int(num_envs), (cores or 1) // actors))


def all_games() -> List[str]:
    """Every ROM name ale-py ships (snake_case, e.g. `ms_pacman`)."""
    return sorted(ale_roms.get_all_rom_ids())


def resolve_game(name: str) -> str:
    """`Pong`, `MsPacman`, `ms_pacman` or `PongNoFrameskip-v4` -> the ROM name; a typo raises
    ValueError naming the nearest games."""
    base = re.sub(r"(NoFrameskip)?-v\d+$", "", name.strip())
    base = base.split("/")[-1]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower().replace("-", "_")
    games = all_games()
    if snake in games:
        return snake
    nearest = difflib.get_close_matches(snake, games, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(g) for g in nearest)}?" if nearest else ""
    raise ValueError(f"Unknown Atari game {name!r}.{hint}")


def protocol_settings(mode: str) -> dict:
    """`AtariBatchedEnv` arguments of the paper's protocol for `mode`: in `train` a lost life
    ends the training episode; in `eval` whole games are scored, each after 1 to 30 no-op
    actions (DQN's evaluation protocol, which the paper used)."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}.")
    if mode == "eval":
        return {"episode_life": False, "noop_action_starts": 30}
    return {"episode_life": True}


@gin.configurable
class AtariBatchedEnv(BatchedEnv):
    """K Atari games stepped by ALE's C++ vector interface.

    Args:
      num_envs: K.
      game: ROM name (any of the 57, or any ROM ale-py ships); case and `-v4` forgiven.
      seed: environment i is seeded with `seed + i`.
      episode_life: a lost life ends the training episode (paper: yes in training; evaluation
        uses whole games, so pass False there).
      noop_max: ALE's own no-op starts: 0 to `noop_max` single emulator frames of no-op at
        the start of a game (training).
      noop_action_starts: if > 0, every game starts with a uniform 1 to this many no-op
        *actions* (each `action_repeat` frames; the agent's actions are overridden), the
        DQN-era evaluation protocol the paper used. ALE's `noop_max` is then off.
      max_episode_frames: frame cap of a game (time-limit truncation, discount 1).
      sticky_action_prob: repeat-action probability (0: off, the paper's setting).
      action_repeat, frame_stack, frame_size, max_pool, grayscale: preprocessing.
      full_action_space: 18 actions instead of the game's minimal set.
      fire_reset: press FIRE after a reset (off: not part of the paper's protocol).
      num_threads: ALE worker threads (None: `default_ale_threads`, this actor's share of
        the host's cores; 0: ALE's own default).
    """

    def __init__(
        self,
        num_envs: int,
        game: str = "pong",
        seed: int = 0,
        episode_life: bool = True,
        noop_max: int = 30,
        noop_action_starts: int = 0,
        max_episode_frames: int = 108_000,
        sticky_action_prob: float = 0.0,
        action_repeat: int = 4,
        frame_stack: int = 4,
        frame_size: int = 84,
        max_pool: bool = True,
        grayscale: bool = True,
        full_action_space: bool = False,
        fire_reset: bool = False,
        num_threads: Optional[int] = None,
    ):
        if ALEVectorInterface is None:  # pragma: no cover
            raise ImportError(f"ale-py with its vector interface is required: {_IMPORT_ERROR}")
        self.game = resolve_game(game)
        self._num_envs = int(num_envs)
        self._seed = int(seed)
        self._episode_life = bool(episode_life)
        self._action_repeat = int(action_repeat)
        self._grayscale = bool(grayscale)
        self._ale = ALEVectorInterface(
            rom_path=ale_roms.get_rom_path(self.game),
            num_envs=self._num_envs,
            frame_skip=self._action_repeat,
            stack_num=int(frame_stack),
            img_height=int(frame_size),
            img_width=int(frame_size),
            grayscale=self._grayscale,
            maxpool=bool(max_pool),
            noop_max=0 if noop_action_starts > 0 else int(noop_max),
            use_fire_reset=bool(fire_reset),
            episodic_life=False,
            life_loss_info=self._episode_life,
            reward_clipping=False,
            max_episode_steps=int(max_episode_frames),
            repeat_action_probability=float(sticky_action_prob),
            full_action_space=bool(full_action_space),
            batch_size=0,
            num_threads=(default_ale_threads(self._num_envs) if num_threads is None
                         else int(num_threads)),
            thread_affinity_offset=-1,
            autoreset_mode="NextStep",
        )
        self._action_set = list(self._ale.get_action_set())
        channels = int(frame_stack) * (1 if self._grayscale else 3)
        self._frame_shape = (int(frame_size), int(frame_size), channels)
        # Per environment: what the previous step returned, and the running game score.
        self._last_kind = np.zeros(self._num_envs, np.int8)  # 0 none, 1 life lost, 2 game over
        self._lives = np.zeros(self._num_envs, np.int64)
        self._game_returns = np.zeros(self._num_envs, np.float64)
        self._finished: List[EpisodeStats] = []
        self._reset_count = 0
        self.start_frames = np.zeros(self._num_envs, np.int64)
        self._noop_action_starts = int(noop_action_starts)
        self._noop_rng = np.random.default_rng(seed)
        self.noops_left = np.zeros(self._num_envs, np.int64)

    # -- specs --------------------------------------------------------------------------------
    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def frames_per_step(self) -> int:
        return self._action_repeat

    @property
    def action_meanings(self) -> List[str]:
        return [str(a).split(".")[-1] for a in self._action_set]

    @property
    def stacked_observations(self):
        channels = 1 if self._grayscale else 3
        return {"frame": channels} if self._frame_shape[-1] > channels else {}

    def observation_spec(self):
        return {"frame": specs.BoundedArray(self._frame_shape, np.uint8, 0, 255, name="frame")}

    def action_spec(self):
        return specs.DiscreteArray(len(self._action_set), name="action")

    # -- stepping -------------------------------------------------------------------------------
    def _frames(self, observation: np.ndarray) -> np.ndarray:
        # ALE gives [K, stack, H, W] (grey) or [K, stack, H, W, 3]; the agent reads HWC.
        if self._grayscale:
            out = np.empty(observation.shape[:1] + observation.shape[2:] + observation.shape[1:2],
                           observation.dtype)
            words = word_view(out)
            if words is None:
                return np.ascontiguousarray(observation.transpose(0, 2, 3, 1))
            stack_into(words, [observation[:, j] for j in range(observation.shape[1])])
            return out
        k, s, h, w, c = observation.shape
        return np.ascontiguousarray(observation.transpose(0, 2, 3, 1, 4).reshape(k, h, w, s * c))

    def _draw_noops(self, n: int) -> np.ndarray:
        if self._noop_action_starts <= 0:
            return np.zeros(n, np.int64)
        return self._noop_rng.integers(1, self._noop_action_starts + 1, size=n)

    def reset(self) -> BatchedTimeStep:
        seeds = self._seed + self._reset_count * self._num_envs + np.arange(self._num_envs)
        self._reset_count += 1
        observation, info = self._ale.reset(np.arange(self._num_envs), seeds.astype(np.int64))
        self._lives[:] = info["lives"]
        # Emulator frames each game spent in its random no-op start.
        self.start_frames = np.asarray(info["episode_frame_number"]).copy()
        self._last_kind[:] = 0
        self._game_returns[:] = 0.0
        self.noops_left[:] = self._draw_noops(self._num_envs)
        k = self._num_envs
        return BatchedTimeStep(
            step_type=np.full(k, FIRST, np.int8),
            reward=np.zeros(k, np.float32),
            discount=np.ones(k, np.float32),
            observation={"frame": self._frames(observation)},
        )

    def step(self, actions: np.ndarray) -> BatchedTimeStep:
        actions = np.asarray(actions)
        if actions.shape != (self._num_envs,):
            raise ValueError(f"Expected actions of shape ({self._num_envs},), got {actions.shape}.")
        if actions.min(initial=0) < 0 or actions.max(initial=0) >= len(self._action_set):
            raise ValueError(f"Actions must be in [0, {len(self._action_set)}), got {actions}.")
        starting = self._last_kind > 0
        # After a lost life the game goes on: a no-op starts the next training episode. After
        # a game over or a time limit ALE resets the game itself and ignores the action.
        # A new game's no-op start overrides the agent's actions too.
        in_noop_start = (self.noops_left > 0) & ~starting
        actions = np.where(starting | in_noop_start, NOOP, actions).astype(np.int32)
        self.noops_left[in_noop_start] -= 1
        self._ale.send(actions, np.ones(self._num_envs, np.float32))
        observation, reward, terminated, truncated, info = self._ale.recv()
        reward = reward.astype(np.float32)
        lives = info["lives"].astype(np.int64)

        new_game = self._last_kind == 2
        self._game_returns[new_game] = 0.0
        self._game_returns += reward
        life_lost = terminated & (lives < self._lives) & (lives > 0) & ~starting
        game_over = (terminated | truncated) & ~life_lost & ~starting
        for i in np.flatnonzero(game_over):
            frames = int(info["episode_frame_number"][i])
            self._finished.append(
                EpisodeStats(float(self._game_returns[i]), frames, self.game, int(i))
            )

        step_type = np.where(starting, FIRST, np.where(life_lost | game_over, LAST, MID))
        discount = np.where(terminated & ~starting, 0.0, 1.0).astype(np.float32)
        self._last_kind = np.where(starting, 0, np.where(game_over, 2, np.where(life_lost, 1, 0)))
        self._last_kind = self._last_kind.astype(np.int8)
        self._lives = lives
        new_games = starting & new_game
        self.noops_left[new_games] = self._draw_noops(int(new_games.sum()))
        return BatchedTimeStep(
            step_type=step_type.astype(np.int8),
            reward=np.where(starting, 0.0, reward).astype(np.float32),
            discount=discount,
            observation={"frame": self._frames(observation)},
        )

    def pop_finished_episodes(self) -> List[EpisodeStats]:
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        self._ale = None
