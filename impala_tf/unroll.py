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


def unflatten_like(template: Any, leaves_by_path: Mapping[str, Any], prefix: str = "") -> Any:
    """`template`'s structure (dicts, namedtuples, tuples, lists) with each leaf replaced by
    `leaves_by_path[path]` (paths as `flatten_with_paths` names them)."""
    if isinstance(template, Mapping):
        return type(template)((k, unflatten_like(template[k], leaves_by_path,
                                                 f"{prefix}{k}/")) for k in template)
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(*(unflatten_like(v, leaves_by_path, f"{prefix}{k}/")
                                for k, v in zip(template._fields, template)))
    if isinstance(template, (tuple, list)):
        return type(template)(unflatten_like(v, leaves_by_path, f"{prefix}{i}/")
                              for i, v in enumerate(template))
    return leaves_by_path[prefix.rstrip("/")]


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
    observation = {name[len(OBSERVATION_PREFIX):]: value for name, value in flat.items()
                   if name.startswith(OBSERVATION_PREFIX)}
    trajectory = Trajectory(observation, *(flat.get(name) for name in Trajectory._fields[1:]))
    core = {name[len(CORE_STATE_PREFIX):]: value for name, value in flat.items()
            if name.startswith(CORE_STATE_PREFIX)}
    if core_state_template is not None:
        return trajectory, unflatten_like(core_state_template, core)
    return trajectory, core
