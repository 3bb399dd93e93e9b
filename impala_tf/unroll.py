"""The unroll inside a process: a `Trajectory` of T+1 steps and the agent's core state before
step 0, with the policy version that acted and the actor that sent it. Free of TensorFlow.

It stays structured from where it is made (the actor's or central inference's
`UnrollBuilder`, the learner's validator) to the batcher; only the codec flattens it to the
wire's `name -> array` fields (`Unroll.flat`, `from_fields`): `observation/NAME`, `action`,
..., `core_state/PATH`. A stacked observation is a `frames.PackedStack` (each frame once)
wherever it came packed.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

CORE_STATE_PREFIX = "core_state/"
OBSERVATION_PREFIX = "observation/"


class Trajectory(NamedTuple):
    """`[T+1, ...]` for one unroll, `[T+1, B, ...]` in the learner (`specs` describes each
    field)."""

    observation: Dict[str, Any]
    action: Any
    reward: Any
    discount: Any
    episode_start: Any
    behaviour_logits: Any


def flatten_with_paths(structure: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    """[(path, leaf)] for nested dicts (sorted keys), namedtuples (field names) and tuples or
    lists (indices), in `tf.nest.flatten` order; paths joined with '/'."""
    if isinstance(structure, Mapping):
        items = [(str(k), structure[k]) for k in sorted(structure)]
    elif isinstance(structure, tuple) and hasattr(structure, "_fields"):
        items = list(zip(structure._fields, structure))
    elif isinstance(structure, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(structure)]
    else:
        return [(prefix.rstrip("/"), structure)]
    out = []
    for key, value in items:
        out.extend(flatten_with_paths(value, f"{prefix}{key}/"))
    return out


def unflatten_like(template: Any, leaves_by_path: Mapping[str, Any]) -> Any:
    """`template`'s structure (dicts, namedtuples, tuples, lists) with each leaf replaced by
    `leaves_by_path[path]` (paths as `flatten_with_paths` names them)."""
    paths = {path: path for path, _ in flatten_with_paths(template)}
    return _builder(template, paths)(leaves_by_path)


class Unroll(NamedTuple):
    """One unroll: `trajectory` `[T+1, ...]` numpy leaves (a stacked observation may be a
    `frames.PackedStack`), `core_state` the agent's core state before step 0 (its structure,
    `[...]` leaves without the batch axis; `()` without one), the policy version that acted
    and the actor it came from."""

    trajectory: Trajectory
    core_state: Any
    policy_version: int
    actor_id: int

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], policy_version: int, actor_id: int,
                  core_state_template: Optional[Any] = None) -> "Unroll":
        """The unroll of the wire's flat fields (`from_fields`)."""
        return cls(*from_fields(flat, core_state_template), policy_version, actor_id)

    def flat(self) -> Dict[str, Any]:
        """The wire's flat fields (see the module docstring), in the spec's order."""
        return fields(self.trajectory, self.core_state)


class Layout:
    """The flat names of one wire spec worked out once, so that making each unroll of it
    (`unroll`) does no more than index the fields: the validator's per-unroll path.

    Args:
      names: the spec's flat field names.
      core_state_template: the agent's core-state structure (None: a dict by path).
    """

    def __init__(self, names, core_state_template: Optional[Any] = None):
        names = list(names)
        self._observations = [(n[len(OBSERVATION_PREFIX):], n) for n in names
                              if n.startswith(OBSERVATION_PREFIX)]
        self._fields = [n if n in names else None for n in Trajectory._fields[1:]]
        core = {n[len(CORE_STATE_PREFIX):]: n for n in names if n.startswith(CORE_STATE_PREFIX)}
        self._core = (_builder(core_state_template, core) if core_state_template is not None
                      else lambda flat: {path: flat[name] for path, name in core.items()})

    def unroll(self, flat: Mapping[str, Any], policy_version: int, actor_id: int) -> "Unroll":
        trajectory = Trajectory({name: flat[key] for name, key in self._observations},
                                *(flat[n] if n is not None else None for n in self._fields))
        return Unroll(trajectory, self._core(flat), policy_version, actor_id)


def _builder(template: Any, names: Mapping[str, str], prefix: str = ""):
    """A function of flat fields that builds `template`'s structure (see `unflatten_like`),
    its walk over the structure done once, here."""
    if isinstance(template, Mapping):
        children = [(k, _builder(template[k], names, f"{prefix}{k}/")) for k in template]
        kind = type(template)
        return lambda flat: kind((k, build(flat)) for k, build in children)
    if isinstance(template, (tuple, list)):
        keys = template._fields if hasattr(template, "_fields") else range(len(template))
        children = [_builder(v, names, f"{prefix}{k}/") for k, v in zip(keys, template)]
        kind = type(template)
        if hasattr(template, "_fields"):
            return lambda flat: kind(*(build(flat) for build in children))
        return lambda flat: kind(build(flat) for build in children)
    name = names[prefix.rstrip("/")]
    return lambda flat: flat[name]


def fields(trajectory: Trajectory, core_state: Any) -> Dict[str, Any]:
    """Flattens one unroll (trajectory and core state at its start) to `name -> leaf`:
    `observation/frame`, `action`, ..., `core_state/h`, `core_state/c`. Works on specs and
    on arrays alike; the order is the spec's and never changes. A None field (one a partial
    wire spec lacks) is left out."""
    out = {name: leaf for name, leaf in flatten_with_paths(trajectory) if leaf is not None}
    for path, leaf in flatten_with_paths(core_state):
        out[CORE_STATE_PREFIX + path] = leaf
    return out


def from_fields(flat: Mapping[str, Any], core_state_template: Optional[Any] = None
                ) -> Tuple[Trajectory, Any]:
    """The (trajectory, core state) of flat `fields`; the core state in the structure of
    `core_state_template` (an agent's initial state), or by path (`{'h': ..., 'c': ...}`).
    A field that `flat` lacks is None (the partial wire specs of transport tests: a learner's
    spec has them all, and its validator accepts nothing else)."""
    unroll = Layout(flat, core_state_template).unroll(flat, 0, 0)
    return unroll.trajectory, unroll.core_state
