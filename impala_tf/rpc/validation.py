"""What the learner accepts from an actor: an unroll checked field by field against what an
environment and a policy can produce, and the finished episodes reported with it.

An unroll that passes `codec.validate_fields` (names, dtypes, shapes, finite floats) can
still poison training: a discount of 1e30 or a reward of 3e38 makes every batch it lands in
a non-finite update, and an instruction token past the embedding table fails the step. So
`UnrollValidator` also checks every value against its bound:

  action               [0, num_actions - 1]
  discount             [0, 1] (dm_env's discount of a step)
  reward               |r| <= UnrollLimits.max_abs_reward
  behaviour_logits     |l| <= UnrollLimits.max_abs_logit
  observation/NAME     the environment spec's [minimum, maximum] (dm_env BoundedArray);
                       floats without bounds: |x| <= UnrollLimits.max_abs_observation
  core_state/...       |x| <= UnrollLimits.max_abs_core_state
  meta policy_version  an int in [0, 2^62)
  meta actor_id        an int in [0, num_actors): the run's actors, no other id
  meta env             (stacked observations) an int in [0, num_envs): the environment
                       within its actor, whose last stack a stream keeps
  meta episodes        entries [return, frames, level], at most as many as the unroll's
                       steps could finish (T x K: each of an actor's K environments ends at
                       most one episode a step, and an actor reports all K environments'
                       with one of its unrolls); frames in [0, max_episode_frames];
                       |return| <= max_abs_reward x frames (no agent step scores more, and
                       an episode has at most as many steps as frames); a level name of at
                       most 200 printable characters (no control characters, no lone
                       surrogates: every sink, TensorBoard, JSON and the terminal, takes it)

and refuses the unrolls of actors the learner has refused (`refuse`: their unrolls made
non-finite updates). Every failure raises `codec.CodecError` naming the field and the bound.
"""

import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import gin
import numpy as np

from impala_tf.envs.base import EpisodeStats
from impala_tf.rpc import codec, frame_packing
from impala_tf.unroll import Layout, Unroll

MAX_LEVEL_NAME = 200
# Actor ids a learner accepts when it is not told the run's actor count (library use).
DEFAULT_NUM_ACTORS = 4096
# Environments per actor a learner accepts when it is not told `Actor.num_envs`.
DEFAULT_NUM_ENVS = 256


@gin.configurable
class UnrollLimits:
    """Magnitudes that no environment or policy of a healthy run reaches (see the module
    docstring); None switches a check off (for the episode counts: derives it from the
    unroll, T x K).

    Args:
      max_abs_reward: |reward| of one agent step, before the loss clips it (an Atari step
        scores at most a few thousand; DMLab tens).
      max_abs_logit: |behaviour logit| (a policy's logits stay within a few tens; 1e4 keeps
        every probability and its gradient finite in float32).
      max_abs_observation: |x| of float observations whose spec has no bounds.
      max_abs_core_state: |x| of the recurrent state an unroll starts from.
      max_abs_episode_return: |return| of a reported episode, beyond the derived
        max_abs_reward x frames (None: that one alone).
      max_episode_frames: length of a reported episode in frames (None: 2^62).
      max_episodes_per_unroll: episodes reported with one unroll (None: what its steps
        could finish, T x K; a step message of central inference: K).
    """

    def __init__(self, max_abs_reward: Optional[float] = 1e6,
                 max_abs_logit: Optional[float] = 1e4,
                 max_abs_observation: Optional[float] = 1e6,
                 max_abs_core_state: Optional[float] = 1e6,
                 max_abs_episode_return: Optional[float] = None,
                 max_episode_frames: Optional[int] = 10**9,
                 max_episodes_per_unroll: Optional[int] = None):
        self.max_abs_reward = max_abs_reward
        self.max_abs_logit = max_abs_logit
        self.max_abs_observation = max_abs_observation
        self.max_abs_core_state = max_abs_core_state
        self.max_abs_episode_return = (None if max_abs_episode_return is None
                                       else float(max_abs_episode_return))
        self.max_episode_frames = (2**62 - 1 if max_episode_frames is None
                                   else int(max_episode_frames))
        self.max_episodes_per_unroll = (None if max_episodes_per_unroll is None
                                        else int(max_episodes_per_unroll))

    def episode_return_bound(self, frames: int) -> float:
        """The largest |return| an episode of `frames` frames can have."""
        bound = float("inf")
        if self.max_abs_reward is not None:
            bound = float(self.max_abs_reward) * frames
        if self.max_abs_episode_return is not None:
            bound = min(bound, self.max_abs_episode_return)
        return bound


def meta_int(value: Any, name: str, low: int = 0, high: int = 2**62) -> int:
    """`value` if it is an int (not a bool) in [low, high), else `CodecError`."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise codec.CodecError(f"meta {name!r} must be an int in [{low}, {high}), got "
                               f"{str(value)[:40]}")
    return value


def check_text(value: Any, name: str, max_chars: int = MAX_LEVEL_NAME) -> str:
    """`value` if it is a str of at most `max_chars` printable characters that encode as
    UTF-8, else `CodecError`: text from the wire reaches TensorBoard (which refuses a lone
    surrogate), metrics.jsonl and the terminal."""
    if not isinstance(value, str) or len(value) > max_chars:
        raise codec.CodecError(f"{name} must be a string of at most {max_chars} characters")
    if not value.isprintable():
        raise codec.CodecError(f"{name} {ascii(value)[:60]} holds a character that is not "
                               "printable text (control, format, surrogate or unassigned)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # isprintable refuses surrogates; this is the second line
        raise codec.CodecError(f"{name} {ascii(value)[:60]} does not encode as UTF-8") from None
    return value


def encode_episodes(episodes: Sequence[EpisodeStats]) -> List[list]:
    """Finished episodes as an actor reports them in a message's meta (`parse_episodes` reads
    them back): [[return, frames, level], ...]."""
    return [[e.episode_return, e.episode_frames, e.level] for e in episodes]


def parse_episodes(raw: Any, limits: Optional[UnrollLimits] = None,
                   max_episodes: int = 1000) -> List[EpisodeStats]:
    """Finished episodes an actor reports with an unroll: [[return, frames, level], ...];
    at most `max_episodes` (what the unroll's steps could finish) unless
    `UnrollLimits.max_episodes_per_unroll` says otherwise."""
    limits = limits or UnrollLimits()
    if limits.max_episodes_per_unroll is not None:
        max_episodes = limits.max_episodes_per_unroll
    if not isinstance(raw, list) or len(raw) > max_episodes:
        raise codec.CodecError(f"meta 'episodes' must be a list of at most {max_episodes} "
                               "entries (what this unroll's steps could finish)")
    episodes = []
    for entry in raw:
        if (not isinstance(entry, list) or len(entry) != 3
                or not isinstance(entry[0], (int, float)) or isinstance(entry[0], bool)):
            raise codec.CodecError(f"malformed episode entry {ascii(entry)[:100]} (expected "
                                   "[return, frames, level])")
        frames = meta_int(entry[1], "episode frames", 0, limits.max_episode_frames + 1)
        bound = limits.episode_return_bound(frames)
        if not abs(entry[0]) <= bound:
            raise codec.CodecError(f"episode return {ascii(entry[0])[:40]} over {frames} "
                                   f"frames is beyond what its steps could score "
                                   f"(|return| <= {bound:g})")
        level = check_text(entry[2], "an episode's level name")
        episodes.append(EpisodeStats(float(entry[0]), frames, level))
    return episodes


# Header bytes beyond the episodes: the field list (a few dozen names) and the ids.
HEADER_ALLOWANCE_BYTES = 16 << 10
# The most header bytes one reported episode takes: a return, a frame count and a level
# name whose characters JSON may escape as 6 bytes each.
EPISODE_ENTRY_BYTES = 64 + 6 * MAX_LEVEL_NAME


def message_limit_bytes(payload_bytes: int, max_episodes: int) -> int:
    """The largest message an honest sender needs for `payload_bytes` of fields and up to
    `max_episodes` reported episodes: what the learner accepts (gRPC refuses more before
    reading it)."""
    return (codec.PREFIX_BYTES + int(payload_bytes) + HEADER_ALLOWANCE_BYTES
            + int(max_episodes) * EPISODE_ENTRY_BYTES)


def _covers_dtype(dtype: np.dtype, low, high) -> bool:
    """Whether [low, high] admits every value of an integer dtype (no check needed)."""
    if dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return bool(np.all(np.asarray(low) <= info.min) and np.all(np.asarray(high) >= info.max))


def field_bounds(
    wire_spec: Mapping[str, Tuple[np.dtype, tuple]], num_actions: int, limits: UnrollLimits,
    observation_bounds: Optional[Mapping[str, Tuple[Any, Any]]] = None,
) -> Dict[str, Tuple[Any, Any]]:
    """name -> (low, high), both included, for every field of `wire_spec` that has a bound
    beyond its dtype's (see the module docstring)."""
    observation_bounds = observation_bounds or {}

    def symmetric(limit):
        return None if limit is None else (-float(limit), float(limit))

    bounds: Dict[str, Optional[Tuple[Any, Any]]] = {}
    for name, (dtype, _) in wire_spec.items():
        if name == "action":
            bounds[name] = (0, num_actions - 1)
        elif name == "discount":
            bounds[name] = (0.0, 1.0)
        elif name == "reward":
            bounds[name] = symmetric(limits.max_abs_reward)
        elif name == "behaviour_logits":
            bounds[name] = symmetric(limits.max_abs_logit)
        elif name.startswith("observation/"):
            observation = name[len("observation/"):]
            if observation in observation_bounds:
                low, high = observation_bounds[observation]
                bounds[name] = (np.asarray(low), np.asarray(high))
            elif np.dtype(dtype).kind == "f":
                bounds[name] = symmetric(limits.max_abs_observation)
        elif name.startswith("core_state/") and np.dtype(dtype).kind == "f":
            bounds[name] = symmetric(limits.max_abs_core_state)
    return {name: b for name, b in bounds.items()
            if b is not None and not _covers_dtype(np.dtype(wire_spec[name][0]), *b)}


class UnrollValidator:
    """Decodes and checks one unroll message (see the module docstring).

    Args:
      wire_spec: name -> (numpy dtype, shape) of an unroll on the wire.
      num_actions: the action set's size.
      max_message_bytes: the largest message decoded (None: the largest an honest actor
        sends, `message_limit`).
      limits: `UnrollLimits` (default: the gin-configured one).
      observation_bounds: observation name -> (minimum, maximum) from the environment's
        dm_env spec (`specs.observation_bounds`).
      num_actors: actor ids accepted are [0, num_actors) (default `DEFAULT_NUM_ACTORS`).
      stacked_observations: observation name -> channels per frame for the observations
        actors send packed (`frame_packing`), each frame once; their stacks are built by the
        batcher (`frame_packing.PackedStack`), from parts checked here.
      num_envs: environments per actor (`Actor.num_envs`): the `env` ids accepted are
        [0, num_envs), and a stream keeps at most that many last stacks (default
        `DEFAULT_NUM_ENVS`).
      core_state_template: the agent's core state structure (its initial state), which an
        accepted unroll's core state takes (None: a dict by path, `{'h': ..., 'c': ...}`).
    """

    def __init__(self, wire_spec: Mapping[str, Tuple[np.dtype, tuple]], num_actions: int,
                 max_message_bytes: Optional[int], limits: Optional[UnrollLimits] = None,
                 observation_bounds: Optional[Mapping[str, Tuple[Any, Any]]] = None,
                 num_actors: Optional[int] = None,
                 stacked_observations: Optional[Mapping[str, int]] = None,
                 num_envs: Optional[int] = None, core_state_template: Any = None):
        self.wire_spec = dict(wire_spec)
        self._layout = Layout(self.wire_spec, core_state_template)
        self.stacked = dict(stacked_observations or {})
        self._unpack = frame_packing.Unpacker(self.wire_spec, self.stacked)
        self.limits = limits or UnrollLimits()
        self.bounds = field_bounds(self.wire_spec, num_actions, self.limits, observation_bounds)
        self.num_actors = int(num_actors or DEFAULT_NUM_ACTORS)
        self.num_envs = int(num_envs or DEFAULT_NUM_ENVS)
        # Stacked observations whose values need a check (floats, booleans, bounds narrower
        # than the dtype): their stacks are built here and checked whole. Atari's uint8 [0, 255]
        # frames need none, and stay packed until the batcher writes them.
        self._checked_whole = {
            name for name in self.stacked
            if f"observation/{name}" in self.bounds
            or np.dtype(self.wire_spec[f"observation/{name}"][0]).kind in "fb"}
        # Each of an actor's K environments ends at most one episode per step, and an actor
        # reports its K environments' episodes with one of its unrolls of T steps.
        action_shape = self.wire_spec.get("action", (None, (1,)))[1]
        self.unroll_length = int(action_shape[0]) - 1 if action_shape else 0
        self.max_episodes_per_unroll = max(1, self.unroll_length) * self.num_envs
        self.max_message_bytes = int(max_message_bytes or self.message_limit())
        self._refused: Set[int] = set()
        self._lock = threading.Lock()

    @property
    def unroll_bytes(self) -> int:
        """The bytes of one unroll's fields as actors send them, stacked observations packed
        to their newest frames (a continued unroll's size, without its header)."""
        total = 0
        for name, (dtype, shape) in self.wire_spec.items():
            size = codec.field_bytes(dtype, shape)
            channels = self.stacked.get(name[len("observation/"):])
            if name.startswith("observation/") and channels:
                size = size * channels // shape[-1]
            total += size
        return total

    @property
    def whole_unroll_bytes(self) -> int:
        """The bytes of one unroll's fields with whole stacks (an environment's first unroll
        on a stream, or an actor that does not pack)."""
        return sum(codec.field_bytes(dtype, shape) for dtype, shape in self.wire_spec.values())

    def message_limit(self) -> int:
        """The largest unroll message an honest actor sends (`message_limit_bytes`)."""
        return message_limit_bytes(self.whole_unroll_bytes, self.max_episodes_per_unroll)

    def refuse(self, actor_ids: Sequence[int]) -> List[int]:
        """Refuses every later unroll of these actors; returns the ones newly refused."""
        with self._lock:
            new = sorted(set(int(a) for a in actor_ids) - self._refused)
            self._refused.update(new)
        return new

    @property
    def refused(self) -> List[int]:
        with self._lock:
            return sorted(self._refused)

    def new_stream(self) -> frame_packing.StreamFrames:
        """What one stream keeps between its unrolls (pass it to every call of that stream)."""
        return frame_packing.StreamFrames()

    def __call__(self, data: bytes, stream: Optional[frame_packing.StreamFrames] = None
                 ) -> Tuple[Unroll, List[EpisodeStats]]:
        """The unroll in `data` and the episodes reported with it; `stream`: the state of the
        stream it came on (continued unrolls need it; None takes whole ones only)."""
        fields, meta = codec.decode(data, codec.UNROLL_MAGIC, self.max_message_bytes)
        actor_id = meta.get("actor_id")
        if isinstance(actor_id, int) and not 0 <= actor_id < self.num_actors:
            raise codec.CodecError(
                f"actor_id {actor_id} is not one of this run's {self.num_actors} actors "
                "(ids 0 to num_actors - 1; Launcher.num_actors is the actors per learner "
                "worker)")
        actor_id = meta_int(actor_id, "actor_id", 0, self.num_actors)
        if actor_id in self._refused:
            raise codec.CodecError(f"actor {actor_id} is refused: its unrolls made non-finite "
                                   "updates (restart the learner to accept it again)")
        last = None  # what the stream's next unroll of this environment starts from
        if self.stacked and list(fields) != list(self.wire_spec):
            env = frame_packing.env_id(meta, self.num_envs)
            streamed = stream is not None and env is not None
            previous = (stream.previous(env, actor_id) if streamed
                        and list(fields) == self._unpack.continued_names else None)
            fields = self._unpack(fields, previous)
            if streamed:  # kept once the unroll is accepted
                last = {f"observation/{name}": fields[f"observation/{name}"].last_frames()
                        for name in self.stacked}
            for name in self._checked_whole:
                fields[f"observation/{name}"] = np.asarray(fields[f"observation/{name}"])
        codec.validate_fields(fields, self.wire_spec, self.bounds)
        unroll = self._layout.unroll(
            fields, meta_int(meta.get("policy_version"), "policy_version"), actor_id)
        episodes = parse_episodes(meta.get("episodes", []), self.limits,
                                  self.max_episodes_per_unroll)
        if last is not None:
            stream.remember(env, actor_id, last)
        return unroll, episodes
