"""Builds an experiment's batched environment from gin: `make_environment.kind` names a
registered kind (Atari, multi-task Atari, DMLab, Catch, or your own); each kind's own
options are bound on its class or function (`AtariBatchedEnv.game`, `AtariMultiTaskEnv.games`,
`make_dmlab.dmlab30`, `make_catch.rows`, ...).

Your own environment: a module of yours calls `register_environment('my_kind', make)` when
imported, and a gin file imports it and names the kind:

    import my_envs                        # on the Python path of the learner and actors
    make_environment.kind = 'my_kind'

docs/environments.md says what `make` must return (a `BatchedEnv`) and what the agent reads
from observations.
"""

from typing import Callable, Dict

import gin

from impala_tf.envs.atari import AtariBatchedEnv, protocol_settings
from impala_tf.envs.atari_multitask import AtariMultiTaskEnv
from impala_tf.envs.base import BatchedEnv
from impala_tf.envs.catch import make_catch
from impala_tf.envs.dmlab import make_dmlab

MODES = ("train", "eval")

# make(num_envs, seed, mode, actor_index) -> BatchedEnv
EnvironmentMaker = Callable[[int, int, str, int], BatchedEnv]
_MAKERS: Dict[str, EnvironmentMaker] = {}


def register_environment(kind: str, make: EnvironmentMaker, replace: bool = False) -> None:
    """Makes `make_environment.kind = kind` build `make(num_envs, seed, mode, actor_index)`.

    Args:
      kind: the name gin files use.
      make: returns a `BatchedEnv` of `num_envs` environments; environment i seeded from
        `seed + i`; `mode` is 'train' or 'eval' (the evaluation protocol, if the
        environment has one); `actor_index` tells actors apart (to assign levels).
      replace: allow re-registering `kind` (else a second registration is an error, so two
        modules cannot silently claim one name).
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"An environment kind is a non-empty string, got {kind!r}.")
    if not callable(make):
        raise TypeError(f"register_environment({kind!r}, ...): {make!r} is not callable.")
    if kind in _MAKERS and not replace and _MAKERS[kind] is not make:
        raise ValueError(f"Environment kind {kind!r} is already registered (pass "
                         "replace=True to override it).")
    _MAKERS[kind] = make


def registered_kinds():
    """The kinds `make_environment.kind` accepts now, sorted."""
    return tuple(sorted(_MAKERS))


register_environment("atari", lambda num_envs, seed, mode, actor_index: AtariBatchedEnv(
    num_envs, seed=seed, **protocol_settings(mode)))
register_environment("atari_multitask", lambda num_envs, seed, mode, actor_index:
                     AtariMultiTaskEnv(num_envs, seed=seed, actor_index=actor_index, mode=mode))
register_environment("catch", lambda num_envs, seed, mode, actor_index: make_catch(
    num_envs, seed=seed))
register_environment("dmlab", lambda num_envs, seed, mode, actor_index: make_dmlab(
    num_envs, seed=seed, actor_index=actor_index, mode="test" if mode == "eval" else "train"))


@gin.configurable
def make_environment(
    num_envs: int, seed: int = 0, mode: str = "train", actor_index: int = 0, kind: str = "atari"
) -> BatchedEnv:
    """K environments of the configured kind.

    Args:
      num_envs: K.
      seed: base seed (environment i gets seed + i).
      mode: `train`, or `eval` for the paper's evaluation protocol (Atari: whole games, not
        lives; DMLab: test levels with the reference mixer seed).
      actor_index: which actor this is (DMLab-30 and multi-task Atari assign levels or games
        to environments from it).
      kind: a registered kind: `atari` (the default), `atari_multitask`, `catch`, `dmlab`,
        or one of yours (`register_environment`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    make = _MAKERS.get(kind)
    if make is None:
        raise ValueError(f"Unknown environment kind {kind!r}; registered: "
                         f"{', '.join(registered_kinds())}. Your own: "
                         "register_environment() in a module the gin file imports "
                         "(docs/environments.md).")
    env = make(int(num_envs), int(seed), mode, int(actor_index))
    if not isinstance(env, BatchedEnv):
        raise TypeError(f"Environment kind {kind!r} made a {type(env).__name__}, not a "
                        "BatchedEnv (wrap single dm_env environments in "
                        "SequentialBatchedEnv; docs/environments.md).")
    if env.num_envs != int(num_envs):
        raise ValueError(f"Environment kind {kind!r} made {env.num_envs} environments "
                         f"for num_envs={num_envs}.")
    return env
