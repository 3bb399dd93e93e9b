"""The batched environment interface that actors drive.

K environments are stepped together; each follows dm_env semantics:
  * `reset()` returns FIRST for every environment (reward 0, discount 1);
  * `step(actions)` returns MID, or LAST when the episode ended on that step, with
    discount 0 at a true termination and 1 at a time-limit truncation;
  * an environment whose previous step was LAST is reset by the next `step` (its action is
    ignored) and returns FIRST.
Observations are dicts of numpy arrays `[K, ...]`. Finished *scored* episodes (a full game
on Atari, where a lost life only ends the training episode) are collected by
`pop_finished_episodes()` for reporting.
"""

import abc
import dataclasses
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import dm_env
import numpy as np
from dm_env import specs

FIRST = np.int8(dm_env.StepType.FIRST)
MID = np.int8(dm_env.StepType.MID)
LAST = np.int8(dm_env.StepType.LAST)


class BatchedTimeStep(NamedTuple):
    """step_type int8 `[K]` (dm_env.StepType values), reward float32 `[K]`, discount float32
    `[K]`, observation dict name -> array `[K, ...]`."""

    step_type: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    observation: Dict[str, np.ndarray]

    def first(self) -> np.ndarray:
        return self.step_type == FIRST

    def last(self) -> np.ndarray:
        return self.step_type == LAST


@dataclasses.dataclass(frozen=True)
class EpisodeStats:
    """A finished scored episode: unclipped return, length in environment frames, the level
    or game name (for multi-task runs) and which of the K environments played it."""

    episode_return: float
    episode_frames: int
    level: str = ""
    env_index: int = -1


class BatchedEnv(abc.ABC):
    """K environments stepped together; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def num_envs(self) -> int:
        """K."""

    @abc.abstractmethod
    def observation_spec(self) -> Mapping[str, specs.Array]:
        """Spec of one environment's observation (no batch dim), name -> dm_env spec."""

    @abc.abstractmethod
    def action_spec(self) -> specs.DiscreteArray:
        """One environment's discrete action set."""

    @property
    def frames_per_step(self) -> int:
        """Environment frames per agent step (the action repeat)."""
        return 1

    @property
    def stacked_observations(self) -> Dict[str, int]:
        """Observation name -> channels per frame, for observations that stack the last
        frames on their channel axis, oldest first (sent once each: `rpc.frame_packing`)."""
        return {}

    @abc.abstractmethod
    def reset(self) -> BatchedTimeStep:
        """Starts a new episode in every environment; all FIRST."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> BatchedTimeStep:
        """Steps every environment with int actions `[K]`."""

    @abc.abstractmethod
    def pop_finished_episodes(self) -> List[EpisodeStats]:
        """Scored episodes finished since the last call."""

    def close(self) -> None:
        """Releases native resources."""


def levels_for_environments(actor_index: int, num_envs: int,
                            levels: Sequence[str]) -> List[str]:
    """Environment j of actor i plays level (or game) `(i * num_envs + j) mod len(levels)`:
    any N actors of K environments cover min(N * K, len(levels)) distinct ones."""
    return [levels[(actor_index * num_envs + j) % len(levels)] for j in range(num_envs)]


def task_coverage(title: str, num_actors: int, num_envs: int, num_tasks: int,
                  noun: str) -> str:
    """One line on how many of `num_tasks` levels or games (`noun`) `num_actors` actors of
    `num_envs` environments train on (`levels_for_environments`), with what to change when
    it is not all of them."""
    environments = num_actors * num_envs
    covered = min(environments, num_tasks)
    line = (f"{title}: {num_actors} actors x {num_envs} environments = {environments} "
            f"environments cover {covered} of the {num_tasks} {noun}")
    if covered < num_tasks:
        line += ("; raise Launcher.num_actors (or ActorEndpoint.num_actors for remote actors) "
                 f"times Actor.num_envs to {num_tasks} or more to train on all of them")
    elif environments % num_tasks:
        line += f" (one environment more for {environments % num_tasks} of the {noun})"
    return line


def stack_observations(observations: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {name: np.stack([o[name] for o in observations]) for name in observations[0]}


class SequentialBatchedEnv(BatchedEnv):
    """K single dm_env environments stepped one after another in this process.

    For environments without a native batched interface (Catch, DMLab). Scored episodes are
    the dm_env episodes; `levels` names each environment for per-level statistics.
    """

    def __init__(
        self,
        envs: Sequence[dm_env.Environment],
        frames_per_step: int = 1,
        levels: Optional[Sequence[str]] = None,
    ):
        if not envs:
            raise ValueError("SequentialBatchedEnv needs at least one environment.")
        self._envs = list(envs)
        self._frames_per_step = int(frames_per_step)
        self._levels = list(levels) if levels is not None else [""] * len(self._envs)
        self._needs_reset = np.ones(len(self._envs), bool)
        self._returns = np.zeros(len(self._envs), np.float64)
        self._lengths = np.zeros(len(self._envs), np.int64)
        self._finished: List[EpisodeStats] = []

    @property
    def num_envs(self) -> int:
        return len(self._envs)

    @property
    def frames_per_step(self) -> int:
        return self._frames_per_step

    @property
    def levels(self) -> List[str]:
        return list(self._levels)

    def observation_spec(self):
        return self._envs[0].observation_spec()

    def action_spec(self):
        return self._envs[0].action_spec()

    def reset(self) -> BatchedTimeStep:
        timesteps = [self._reset_one(i) for i in range(self.num_envs)]
        return self._batch(timesteps)

    def step(self, actions: np.ndarray) -> BatchedTimeStep:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"Expected actions of shape ({self.num_envs},), got {actions.shape}.")
        timesteps = []
        for i, env in enumerate(self._envs):
            if self._needs_reset[i]:
                timesteps.append(self._reset_one(i))
                continue
            timestep = env.step(int(actions[i]))
            self._returns[i] += timestep.reward or 0.0
            self._lengths[i] += self._frames_per_step
            if timestep.last():
                self._needs_reset[i] = True
                self._finished.append(
                    EpisodeStats(
                        float(self._returns[i]), int(self._lengths[i]), self._levels[i], i
                    )
                )
            timesteps.append(timestep)
        return self._batch(timesteps)

    def _reset_one(self, i: int) -> dm_env.TimeStep:
        self._needs_reset[i] = False
        self._returns[i] = 0.0
        self._lengths[i] = 0
        return self._envs[i].reset()

    @staticmethod
    def _batch(timesteps: Sequence[dm_env.TimeStep]) -> BatchedTimeStep:
        return BatchedTimeStep(
            step_type=np.array([t.step_type for t in timesteps], np.int8),
            reward=np.array([t.reward or 0.0 for t in timesteps], np.float32),
            discount=np.array(
                [1.0 if t.discount is None else t.discount for t in timesteps], np.float32
            ),
            observation=stack_observations([t.observation for t in timesteps]),
        )

    def pop_finished_episodes(self) -> List[EpisodeStats]:
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        for env in self._envs:
            env.close()
