"""Your own environment: a module outside the package registers a kind, a gin file imports
it and names it, and IMPALA trains on it through the real command (examples/corridor)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dm_env
import numpy as np
import pytest
from dm_env import specs

from impala_tf.envs import factory
from impala_tf.envs.base import SequentialBatchedEnv
from impala_tf.envs.catch import make_catch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "corridor"


@pytest.fixture
def scratch_kinds():
    """Registrations made by a test are removed after it."""
    before = dict(factory._MAKERS)
    yield
    factory._MAKERS.clear()
    factory._MAKERS.update(before)


def test_a_registered_kind_is_built_with_the_call_arguments(scratch_kinds):
    calls = []

    def make(num_envs, seed, mode, actor_index):
        calls.append((num_envs, seed, mode, actor_index))
        return make_catch(num_envs, seed=seed)

    factory.register_environment("mine", make)
    env = factory.make_environment(3, seed=7, mode="eval", actor_index=2, kind="mine")
    assert env.num_envs == 3 and calls == [(3, 7, "eval", 2)]
    assert "mine" in factory.registered_kinds()


def test_registration_mistakes_fail_with_one_clear_line(scratch_kinds):
    factory.register_environment("mine", lambda n, s, m, a: make_catch(n))
    with pytest.raises(ValueError, match="'mine' is already registered"):
        factory.register_environment("mine", lambda n, s, m, a: make_catch(n))
    with pytest.raises(ValueError, match=r"Unknown environment kind 'nope'; registered: "
                       r"atari, atari_multitask, catch, dmlab, mine\. Your own"):
        factory.make_environment(1, kind="nope")

    class Single(dm_env.Environment):  # a single environment where a batch is expected
        def reset(self): ...
        def step(self, action): ...
        def observation_spec(self): return {"frame": specs.Array([1, 1, 1], np.uint8)}
        def action_spec(self): return specs.DiscreteArray(2)

    factory.register_environment("single", lambda n, s, m, a: Single())
    with pytest.raises(TypeError, match="made a Single, not a BatchedEnv"):
        factory.make_environment(1, kind="single")
    factory.register_environment("short", lambda n, s, m, a: make_catch(1))
    with pytest.raises(ValueError, match="made 1 environments for num_envs=4"):
        factory.make_environment(4, kind="short")


def test_the_example_follows_the_batched_contract(scratch_kinds):
    sys.path.insert(0, str(EXAMPLE))
    try:  # importing it registers "corridor"; scratch_kinds and the pop below undo that
        import corridor
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("corridor", None)
    env = corridor.make_corridors(2, seed=0, length=5, time_limit=3)
    assert isinstance(env, SequentialBatchedEnv)
    first = env.reset()
    assert first.first().all() and first.observation["frame"].shape == (2, 1, 5, 1)
    walk = [env.step(np.array([corridor.RIGHT, corridor.STAY])) for _ in range(3)]
    # Environment 0 reaches the right end in 2 steps (+1, discount 0) and restarts.
    assert walk[1].last()[0] and walk[1].reward[0] == 1.0 and walk[1].discount[0] == 0.0
    assert walk[2].first()[0]
    # Environment 1 stays put until the time limit cuts it: LAST with discount 1.
    assert walk[2].last()[1] and walk[2].discount[1] == 1.0 and walk[2].reward[1] == 0.0
    assert [e.episode_return for e in env.pop_finished_episodes()] == [1.0, 0.0]


@pytest.mark.parametrize("inference", ["actor", "central"])
def test_impala_learns_an_environment_defined_outside_the_package(tmp_path, inference):
    """As docs/environments.md runs it, from the checkout with the example's folder on
    PYTHONPATH: the learner and both actor processes (TensorFlow actors, or environment
    actors under central inference) import corridor.py through the gin file's `import`;
    the agent learns to walk right."""
    logdir = tmp_path / "run"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(EXAMPLE))
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.train", f"--gin_file={EXAMPLE / 'corridor.gin'}",
         f"--logdir={logdir}", "--max_frames=60000",
         "--gin_bindings=Learner.log_every_seconds = 2",
         f"--gin_bindings=Launcher.inference = '{inference}'"],
        cwd=EXAMPLE.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (logdir / "metrics.jsonl").open()]
    returns = [r["episode_return_mean"] for r in records
               if r["episode_return_mean"] is not None]
    assert records[-1]["env_frames"] >= 60000 and records[-1]["rejected_unrolls"] == 0
    assert returns[-1] >= 0.9, returns  # the optimum is 1.0 (walk right); a random walk ~0
    assert "import corridor" in (logdir / "operative_config.gin").read_text()
