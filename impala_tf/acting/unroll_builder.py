"""K environments' steps cut into K unrolls of T+1 steps: the actor's (`actor.Actor`) and
central inference's (`central_inference`) one way of building them.

Stacked observations (`BatchedEnv.stacked_observations`) leave as `frames.PackedStack`s, each
frame once: where each environment's stack restarts is given (central inference's step
messages say) or decided from the pixels against the step before.
"""

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from impala_tf import frames
from impala_tf.envs.base import BatchedTimeStep
from impala_tf.unroll import Trajectory, Unroll, flatten_with_paths, unflatten_like


class UnrollBuilder:
    """Collects T+1 steps for K environments and cuts them into K unrolls.

    Args:
      num_envs, unroll_length, num_actions: K, T and the action set's size.
      stacked: observation name -> channels per frame of the stacked observations.
    """

    def __init__(self, num_envs: int, unroll_length: int, num_actions: int,
                 stacked: Optional[Mapping[str, int]] = None):
        self.num_envs, self.unroll_length, self.num_actions = num_envs, unroll_length, num_actions
        self.stacked = dict(stacked or {})
        self._steps: List[Dict[str, Any]] = []
        self._restarts: Dict[str, List[np.ndarray]] = {}  # name -> per step [K] bool

    def start(self, timestep: BatchedTimeStep, prev_actions: np.ndarray,
              prev_logits: np.ndarray) -> None:
        """The first step of an unroll: the current observation and what led to it."""
        self._steps = []
        self._restarts = {name: [] for name in self.stacked}
        self.append(timestep, prev_actions, prev_logits)

    def append(self, timestep: BatchedTimeStep, actions: np.ndarray, logits: np.ndarray,
               restarts: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """A step; `restarts`: stacked observation name -> `[K]` bool, whether each
        environment's stack restarts here (None: decided from the pixels)."""
        for name, k in self.stacked.items():
            if restarts is not None:
                restart = np.asarray(restarts[name], bool)
            elif self._steps:
                restart = ~frames.stack_continues(timestep.observation[name],
                                                  self._steps[-1]["observation"][name], k)
            else:
                restart = np.zeros(self.num_envs, bool)  # step 0 carries its older frames
            self._restarts[name].append(restart)
        self._steps.append(dict(
            observation=timestep.observation, action=actions.astype(np.int32),
            reward=timestep.reward.astype(np.float32),
            discount=timestep.discount.astype(np.float32),
            episode_start=timestep.first(), behaviour_logits=logits.astype(np.float32)))

    @property
    def full(self) -> bool:
        return len(self._steps) == self.unroll_length + 1

    def _packed(self, name: str) -> List[frames.PackedStack]:
        """Each environment's `PackedStack` of the stacked observation `name`."""
        k, steps = self.stacked[name], self._steps
        stacks = [s["observation"][name] for s in steps]  # T+1 x [K, H, W, S*k]
        newest = np.stack([s[..., -k:] for s in stacks], axis=1)  # [K, T+1, H, W, k]
        restart = np.stack(self._restarts[name], axis=1)  # [K, T+1], step 0's all False
        out = []
        for env in range(self.num_envs):
            rows = np.flatnonzero(restart[env])
            older = (np.stack([stacks[t][env, ..., :-k] for t in rows]) if len(rows)
                     else np.empty((0,) + stacks[0].shape[1:-1] + (stacks[0].shape[-1] - k,),
                                   stacks[0].dtype))
            out.append(frames.PackedStack(
                (len(steps),) + stacks[0].shape[1:], stacks[0].dtype, k, newest[env],
                np.ascontiguousarray(frames.frames_of(stacks[0][env, ..., :-k], k)),
                restart[env], older))
        return out

    def unrolls(self, core_state: Any, policy_version: int, actor_id: int) -> List[Unroll]:
        """The K unrolls (`[T+1, ...]` each; core state `[...]` leaves in its structure)."""
        def stack(key):
            return np.stack([s[key] for s in self._steps], axis=1)  # [K, T+1, ...]

        observation = {}
        for name in self._steps[0]["observation"]:
            if name in self.stacked:
                observation[name] = self._packed(name)
            else:
                observation[name] = np.stack([s["observation"][name] for s in self._steps],
                                             axis=1)
        action, reward, discount = stack("action"), stack("reward"), stack("discount")
        episode_start, logits = stack("episode_start"), stack("behaviour_logits")
        core = [(path, np.asarray(leaf)) for path, leaf in flatten_with_paths(core_state)]
        return [
            Unroll(Trajectory({name: value[env] for name, value in observation.items()},
                              action[env], reward[env], discount[env], episode_start[env],
                              logits[env]),
                   unflatten_like(core_state, {path: leaf[env] for path, leaf in core}),
                   policy_version, actor_id)
            for env in range(self.num_envs)
        ]
