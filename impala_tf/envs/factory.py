"""Builds an experiment's batched environment from gin: `make_environment.kind` picks Atari,
multi-task Atari, DMLab or Catch; each kind's own options are bound on its class or function
(`AtariBatchedEnv.game`, `AtariMultiTaskEnv.games`, `make_dmlab.dmlab30`, `make_catch.rows`,
...)."""

import gin

from impala_tf.envs.atari import AtariBatchedEnv, protocol_settings
from impala_tf.envs.atari_multitask import AtariMultiTaskEnv
from impala_tf.envs.base import BatchedEnv
from impala_tf.envs.catch import make_catch
from impala_tf.envs.dmlab import make_dmlab

KINDS = ("atari", "atari_multitask", "catch", "dmlab")
MODES = ("train", "eval")


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
      kind: `atari`, `atari_multitask`, `catch` or `dmlab`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if kind == "atari":
        return AtariBatchedEnv(num_envs, seed=seed, **protocol_settings(mode))
    if kind == "atari_multitask":
        return AtariMultiTaskEnv(num_envs, seed=seed, actor_index=actor_index, mode=mode)
    if kind == "catch":
        return make_catch(num_envs, seed=seed)
    if kind == "dmlab":
        return make_dmlab(
            num_envs, seed=seed, actor_index=actor_index, mode="test" if mode == "eval" else "train"
        )
    raise ValueError(f"Unknown environment kind {kind!r}; expected one of {KINDS}.")
