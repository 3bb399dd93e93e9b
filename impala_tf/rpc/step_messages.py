"""The messages of central inference (`/impala.Learner/Act`), free of TensorFlow.

An environment actor opens one bidirectional stream and sends, in order:

  hello   meta {"actor_id": i}; the learner answers with the run's settings,
          meta {"num_envs": K, "seed": S, "num_actions": A}.
  step    one per agent step of its K environments (the previous answer's actions
          applied):
            step_type   int8 [K]      dm_env.StepType
            reward      float32 [K]
            discount    float32 [K]
            observation/NAME          [K, ...]   an observation that does not stack frames
            observation/NAME/newest   [K, H, W, k]              each stack's newest frame
            observation/NAME/restart  [K] bool                  this stack is not the last
                                                                one shifted by a frame
            observation/NAME/older    [R, H, W, (S-1)*k]        the older frames of those R
                                                                (absent when R = 0)
          meta {"episodes": [[return, frames, level], ...]} (finished since the last step);
          the learner answers with the actions, `action` int32 [K].

Each frame crosses the wire once (`frames.StepStacks`): the actor decides per environment
from the pixels themselves whether a stack continues the one before it, so episode starts,
life losses and resets need no rule, and the learner (`StepDecoder`) rebuilds exactly the
stacks the environment returned, for its inference, and keeps where they restarted
(`StepDecoder.restarts`), for the unrolls it assembles (`frames.PackedStack`). A stream's
first step restarts every stack.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from impala_tf.envs.base import BatchedTimeStep, EpisodeStats
from impala_tf.rpc import codec
from impala_tf.rpc.validation import (UnrollLimits, encode_episodes, field_bounds,
                                      message_limit_bytes, meta_int, parse_episodes)
from impala_tf.frames import StepStacks

HELLO_MAGIC = b"IMH1"
STEP_MAGIC = b"IMS1"
ACTIONS_MAGIC = b"IMA1"


class SessionRefused(Exception):
    """An actor that may not act now; `code` names the gRPC status (a `grpc.StatusCode`
    name) that ends its stream."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def encode_hello(actor_id: int) -> bytes:
    return codec.encode(HELLO_MAGIC, {}, {"actor_id": int(actor_id)})


def encode_settings(num_envs: int, seed: int, num_actions: int) -> bytes:
    """The learner's answer to a hello: what the actor runs."""
    return codec.encode(HELLO_MAGIC, {}, {"num_envs": int(num_envs), "seed": int(seed),
                                          "num_actions": int(num_actions)})


def decode_settings(data: bytes) -> Dict[str, int]:
    _, meta = codec.decode(data, HELLO_MAGIC)
    return {"num_envs": meta_int(meta.get("num_envs"), "num_envs", 1),
            "seed": meta_int(meta.get("seed"), "seed", -2**62),
            "num_actions": meta_int(meta.get("num_actions"), "num_actions", 1)}


def encode_actions(actions: np.ndarray) -> bytes:
    return codec.encode(ACTIONS_MAGIC, {"action": np.asarray(actions, np.int32)})


def decode_actions(data: bytes, num_envs: int, num_actions: int) -> np.ndarray:
    """int32 `[K]`; `codec.CodecError` unless exactly K actions in [0, num_actions)."""
    fields, _ = codec.decode(data, ACTIONS_MAGIC)
    codec.validate_fields(fields, {"action": (np.dtype(np.int32), (num_envs,))},
                          {"action": (0, num_actions - 1)})
    return fields["action"]


def step_message_limit(observation_spec: Mapping[str, Tuple[Any, tuple]],
                       num_envs: int) -> int:
    """The largest step message an honest environment actor sends: K environments' whole
    observations (every stack restarting) and up to K episodes."""
    payload = num_envs * (1 + 4 + 4 + 1 + sum(
        codec.field_bytes(dtype, shape) for dtype, shape in observation_spec.values()))
    return message_limit_bytes(payload, num_envs)


class StepEncoder:
    """The actor's side: one step message per call, each stacked frame sent once.

    Args:
      stacked: observation name -> channels per frame (`BatchedEnv.stacked_observations`).
    """

    def __init__(self, stacked: Mapping[str, int]):
        self.stacked = dict(stacked)
        self._stacks: Dict[str, StepStacks] = {}

    def reset(self) -> None:
        """A new stream: the next step restarts every stack."""
        self._stacks = {}

    def encode(self, timestep: BatchedTimeStep, episodes: List[EpisodeStats]) -> bytes:
        fields = {"step_type": np.asarray(timestep.step_type, np.int8),
                  "reward": np.asarray(timestep.reward, np.float32),
                  "discount": np.asarray(timestep.discount, np.float32)}
        for name, value in timestep.observation.items():
            k = self.stacked.get(name)
            if k is None:
                fields[f"observation/{name}"] = value
                continue
            stacks = self._stacks.setdefault(name, StepStacks(k))
            newest, restart, older = stacks.split(value)
            fields[f"observation/{name}/newest"] = newest
            fields[f"observation/{name}/restart"] = restart
            if restart.any():
                fields[f"observation/{name}/older"] = older
        meta = {"episodes": encode_episodes(episodes)}
        return codec.encode(STEP_MAGIC, fields, meta)


class StepDecoder:
    """The learner's side, one per stream: checks a step message against the run's spec
    and bounds and rebuilds its stacks from the stream's last ones.

    Args:
      observation_spec: observation name -> (numpy dtype, shape of one environment's).
      num_envs: K.
      stacked: observation name -> channels per frame.
      limits: `UnrollLimits` (rewards, observations, episodes).
      observation_bounds: observation name -> (minimum, maximum), the environment's.
      max_message_bytes: the largest message decoded.
    """

    def __init__(self, observation_spec: Mapping[str, Tuple[Any, tuple]], num_envs: int,
                 stacked: Mapping[str, int], limits: Optional[UnrollLimits] = None,
                 observation_bounds: Optional[Mapping[str, Tuple[Any, Any]]] = None,
                 max_message_bytes: Optional[int] = None):
        self.num_envs = int(num_envs)
        self.stacked = dict(stacked)
        self.limits = limits or UnrollLimits()
        self.max_message_bytes = max_message_bytes
        self._observations = {name: (np.dtype(dtype), tuple(shape))
                              for name, (dtype, shape) in observation_spec.items()}
        k = self.num_envs
        self._fixed = {"step_type": (np.dtype(np.int8), (k,)),
                       "reward": (np.dtype(np.float32), (k,)),
                       "discount": (np.dtype(np.float32), (k,))}
        per_step = {f"observation/{name}": (dtype, (k,) + shape)
                    for name, (dtype, shape) in self._observations.items()}
        bounds = field_bounds({**self._fixed, **per_step}, 1, self.limits, observation_bounds)
        bounds["step_type"] = (0, 2)
        self._bounds = bounds
        self._stacks = {name: StepStacks(k) for name, k in self.stacked.items()}
        # Stacked observation name -> [K] bool: where the last decoded step's stacks restarted.
        self.restarts: Dict[str, np.ndarray] = {}

    def _spec(self, fields: Mapping[str, np.ndarray]):
        """The message's expected (dtype, shape) per field, and its bounds."""
        spec, bounds = dict(self._fixed), dict(self._bounds)
        k = self.num_envs
        for name, (dtype, shape) in self._observations.items():
            key = f"observation/{name}"
            channels = self.stacked.get(name)
            if channels is None:
                spec[key] = (dtype, (k,) + shape)
                continue
            if shape[-1] % channels or shape[-1] < channels:
                raise codec.CodecError(f"{key}: {shape[-1]} channels do not stack frames of "
                                       f"{channels}")
            restart = fields.get(f"{key}/restart")
            restarts = (int(np.count_nonzero(restart)) if isinstance(restart, np.ndarray)
                        and restart.shape == (k,) and restart.dtype == bool else 0)
            frame = shape[:-1]
            spec[f"{key}/newest"] = (dtype, (k,) + frame + (channels,))
            spec[f"{key}/restart"] = (np.dtype(bool), (k,))
            if restarts:
                spec[f"{key}/older"] = (dtype, (restarts,) + frame + (shape[-1] - channels,))
            if key in bounds:
                # A stack's bounds per channel do not fit its newest or older frames: their
                # extremes hold for every frame.
                low, high = bounds.pop(key)
                bounds[f"{key}/newest"] = bounds[f"{key}/older"] = (np.min(low), np.max(high))
        return spec, bounds

    def decode(self, data: bytes) -> Tuple[BatchedTimeStep, List[EpisodeStats]]:
        """The K environments' timestep and the episodes reported with it; `CodecError`
        for anything malformed (the stream then ends, and with it what it kept)."""
        fields, meta = codec.decode(data, STEP_MAGIC, self.max_message_bytes)
        spec, bounds = self._spec(fields)
        codec.validate_fields(fields, spec, bounds)
        observation, restarts = {}, {}
        for name in self._observations:
            key = f"observation/{name}"
            if name not in self.stacked:
                observation[name] = fields[key]
                continue
            restart = fields[f"{key}/restart"]
            dtype, shape = self._observations[name]
            try:
                observation[name] = self._stacks[name].join(
                    fields[f"{key}/newest"], restart, fields.get(f"{key}/older"),
                    (self.num_envs,) + shape, dtype)
            except ValueError as error:
                raise codec.CodecError(f"{key}: {error}") from None
            restarts[name] = restart
        self.restarts = restarts
        timestep = BatchedTimeStep(fields["step_type"], fields["reward"], fields["discount"],
                                   observation)
        # Each environment ends at most one episode a step.
        return timestep, parse_episodes(meta.get("episodes", []), self.limits, self.num_envs)
