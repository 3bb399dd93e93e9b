"""DeepMind Lab through its Python API (`deepmind_lab`), as in the paper (Appendix D).

  * observations: `RGB_INTERLEAVED` 96 wide x 72 high -> `frame` uint8 `[72, 96, 3]`; the
    `INSTR` text -> `instruction` int32 token ids (`networks.tokenize_instruction`);
  * actions: the paper's 9-action set (Table D.2, `data/dmlab_action_set.csv`), each
    repeated 4 times (`num_steps=4`);
  * an episode ends when the level stops running (discount 0, as in the reference code);
  * DMLab-30: levels load as `contributed/dmlab30/<name>`; training uses the train level,
    test mode the test level with `allowHoldOutLevels` and the reference `mixerSeed`;
    in multi-task runs environment j of actor i plays level (i K + j) mod 30
    (`levels_for_environments`).

`deepmind_lab` is built from source, not installed from PyPI; without it `DmLabEnv` raises an
ImportError that says how to get it. The test suite runs this adapter against a faithful
fake of the `deepmind_lab` API (`tests/fake_deepmind_lab.py`).
"""

import csv
import importlib
import os
import shutil
from typing import Dict, List, Optional

import dm_env
import gin
import numpy as np
from dm_env import specs

from impala_tf.envs.base import SequentialBatchedEnv, levels_for_environments, task_coverage
from impala_tf.envs.instruction_tokens import (
    DEFAULT_MAX_INSTRUCTION_LENGTH, DEFAULT_NUM_BUCKETS, tokenize_instruction)
from impala_tf.scores import DATA_DIR, dmlab30_levels

DMLAB30_PREFIX = "contributed/dmlab30/"
TEST_MIXER_SEED = 0x600D5EED
_INSTALL_HINT = (
    "deepmind_lab is not installed. It is not on PyPI: build its pip package from the "
    "deepmind/lab repository (bazel build -c opt //python/pip_package:build_pip_package, "
    "then ./bazel-bin/python/pip_package/build_pip_package /tmp/dmlab_pkg and "
    "pip install /tmp/dmlab_pkg/deepmind_lab-*.whl)."
)


def _load_action_set() -> np.ndarray:
    with open(DATA_DIR / "dmlab_action_set.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ["look_lr", "look_du", "strafe_lr", "move_bf", "fire", "jump", "crouch"]
    return np.array([[int(r[c]) for c in columns] for r in rows], dtype=np.intc)


ACTION_SET = _load_action_set()  # [9, 7], DMLab's action order


def import_deepmind_lab():
    """The `deepmind_lab` module, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("deepmind_lab")
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error


def dmlab30_level_names(mode: str = "train") -> List[str]:
    """The 30 level names to load in `train` or `test` mode, in the reference order."""
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")
    return [lvl.train_level if mode == "train" else lvl.test_level for lvl in dmlab30_levels()]


def dmlab30_coverage(num_actors: int, num_envs: int) -> str:
    """One line on how many DMLab-30 levels `num_actors` actors of `num_envs` environments
    train on (`base.task_coverage`)."""
    return task_coverage("DMLab-30", num_actors, num_envs, 30, "levels")


def level_path(level: str) -> str:
    """`rooms_watermaze` -> `contributed/dmlab30/rooms_watermaze`; other paths unchanged."""
    known = {n for lvl in dmlab30_levels() for n in (lvl.level, lvl.train_level, lvl.test_level)}
    return DMLAB30_PREFIX + level if level in known else level


class LevelCache:
    """A level cache for `deepmind_lab.Lab(level_cache=...)`: compiled levels are kept in a
    directory and reused across processes and runs (what the reference code did on GCS)."""

    def __init__(self, cache_dir: str):
        self._cache_dir = cache_dir
        os.makedirs(cache_dir, exist_ok=True)

    def fetch(self, key: str, pk3_path: str) -> bool:
        path = os.path.join(self._cache_dir, key)
        if os.path.isfile(path):
            shutil.copyfile(path, pk3_path)
            return True
        return False

    def write(self, key: str, pk3_path: str) -> None:
        path = os.path.join(self._cache_dir, key)
        if not os.path.isfile(path):
            tmp = path + ".tmp"
            shutil.copyfile(pk3_path, tmp)
            os.replace(tmp, path)


@gin.configurable
class DmLabEnv(dm_env.Environment):
    """One DMLab level as a dm_env.Environment.

    Args:
      level: a DMLab-30 name (`rooms_watermaze`) or any level path.
      seed: seeds the per-episode DMLab seeds.
      mode: `train`, or `test` (hold-out levels allowed, the reference `mixerSeed`).
      num_action_repeats: DMLab frames per agent step (4).
      width, height: observation size (96 x 72).
      instruction_length: tokens kept from `INSTR`.
      num_buckets: hash buckets for instruction words.
      level_cache_dir: if set, compiled levels are cached there.
      renderer: `software` or `hardware`.
      extra_config: more DMLab config entries (values are passed as strings).
    """

    def __init__(
        self,
        level: str,
        seed: int = 0,
        mode: str = "train",
        num_action_repeats: int = 4,
        width: int = 96,
        height: int = 72,
        instruction_length: int = DEFAULT_MAX_INSTRUCTION_LENGTH,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
        level_cache_dir: Optional[str] = None,
        renderer: str = "software",
        extra_config: Optional[Dict[str, object]] = None,
    ):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")
        deepmind_lab = import_deepmind_lab()
        self.level = level
        self._num_action_repeats = int(num_action_repeats)
        self._instruction_length = int(instruction_length)
        self._num_buckets = int(num_buckets)
        self._rng = np.random.RandomState(seed)
        self._frame_shape = (int(height), int(width), 3)
        config = {"width": width, "height": height, "logLevel": "WARN"}
        if mode == "test":
            config.update(allowHoldOutLevels="true", mixerSeed=TEST_MIXER_SEED)
        config.update(extra_config or {})
        self._lab = deepmind_lab.Lab(
            level=level_path(level),
            observations=["RGB_INTERLEAVED", "INSTR"],
            config={k: str(v) for k, v in config.items()},
            renderer=renderer,
            level_cache=LevelCache(level_cache_dir) if level_cache_dir else None,
        )
        self._last_observation = None
        self._needs_reset = True

    def _observation(self):
        raw = self._lab.observations()
        self._last_observation = {
            "frame": np.asarray(raw["RGB_INTERLEAVED"], dtype=np.uint8),
            "instruction": tokenize_instruction(
                str(raw["INSTR"]), self._instruction_length, self._num_buckets
            ),
        }
        return self._last_observation

    def reset(self) -> dm_env.TimeStep:
        self._lab.reset(seed=int(self._rng.randint(0, 2**31 - 1)))
        self._needs_reset = False
        return dm_env.restart(self._observation())

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        action = int(action)
        if not 0 <= action < len(ACTION_SET):
            raise ValueError(f"DMLab action must be in [0, {len(ACTION_SET)}), got {action}.")
        reward = float(self._lab.step(ACTION_SET[action], num_steps=self._num_action_repeats))
        if not self._lab.is_running():
            # A stopped level has no observations; the last one stands in (discount 0).
            self._needs_reset = True
            return dm_env.termination(reward, dict(self._last_observation))
        return dm_env.transition(reward, self._observation())

    def observation_spec(self):
        return {
            "frame": specs.BoundedArray(self._frame_shape, np.uint8, 0, 255, name="frame"),
            "instruction": specs.BoundedArray(
                [self._instruction_length], np.int32, 0, self._num_buckets, name="instruction"
            ),
        }

    def action_spec(self):
        return specs.DiscreteArray(len(ACTION_SET), name="action")

    def close(self) -> None:
        self._lab.close()


@gin.configurable
def make_dmlab(
    num_envs: int,
    seed: int = 0,
    level: Optional[str] = "rooms_watermaze",
    dmlab30: bool = False,
    actor_index: int = 0,
    mode: str = "train",
    num_action_repeats: int = 4,
) -> SequentialBatchedEnv:
    """K DMLab environments. With `dmlab30=True` environment j of actor i plays DMLab-30's
    level `(i * K + j) mod 30` (train or test name per `mode`; printed), else all play
    `level`."""
    if dmlab30:
        levels = levels_for_environments(actor_index, num_envs, dmlab30_level_names(mode))
        print(f"actor {actor_index}: DMLab-30 levels {', '.join(levels)}", flush=True)
    else:
        levels = [level] * num_envs
    envs = [
        DmLabEnv(lvl, seed=seed + i, mode=mode, num_action_repeats=num_action_repeats)
        for i, lvl in enumerate(levels)
    ]
    return SequentialBatchedEnv(envs, frames_per_step=num_action_repeats, levels=levels)
