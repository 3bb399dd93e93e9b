"""Every experiment gin file parses and builds its models; typos name the bad key."""

import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

import fake_deepmind_lab
from impala_tf import config, gin_utils
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.envs.factory import make_environment
from impala_tf.run_config import RunConfig
from impala_tf.specs import num_tasks, tensor_specs

GIN_FILES = sorted(config.EXPERIMENTS_DIR.rglob("*.gin"))

ATARI_SPEC = {"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}
DMLAB_SPEC = {
    "frame": tf.TensorSpec([72, 96, 3], tf.uint8),
    "instruction": tf.TensorSpec([16], tf.int32),
}


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()


@pytest.fixture
def fake_lab(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepmind_lab", fake_deepmind_lab)


def test_the_paper_experiments_exist():
    names = {str(p.relative_to(config.EXPERIMENTS_DIR)) for p in GIN_FILES}
    assert {"catch.gin", "atari/pong_shallow.gin", "atari/experts_shallow.gin",
            "atari/experts_deep.gin", "dmlab/single_task_deep.gin",
            "dmlab/dmlab30_deep.gin"} <= names


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: str(p.relative_to(config.EXPERIMENTS_DIR)))
def test_gin_file_parses_and_builds(path, fake_lab):
    """Parses the file, builds its environment, and the agent and update for its specs."""
    config.parse_config([str(path)])
    env = make_environment(2)
    agent = build_agent(tensor_specs(env.observation_spec()),
                                 env.action_spec().num_values, num_tasks(env.observation_spec()))
    step = build_train_step(agent)
    assert RunConfig().num_action_repeats == env.frames_per_step
    assert agent.count_params() > 1_000
    # The paper's baseline cost, except where a file says it runs another recipe's weight.
    want_baseline_cost = {"pong_nature_a2c.gin": 1.0,
                          "pong_shallow_reuse.gin": 1.0,
                          "pong_shallow_adam_a2c_batch.gin": 1.0,
                          "pong_shallow_adam_t5_b8.gin": 1.0,
                          "pong_shallow_adam_t5_b8_centred.gin": 1.0,
                          "multitask_shallow_small.gin": 1.0,
                          "multitask_shallow_small_popart.gin": 1.0}.get(path.name, 0.5)
    assert step.discount == 0.99 and step.baseline_cost == want_baseline_cost
    assert "Agent.torso" in gin.operative_config_str()


def test_paper_values_reach_the_objects(fake_lab):
    config.parse_config(["atari/experts_shallow.gin"])
    assert make_environment(1).game == "pong"
    evaluation_env = make_environment(2, mode="eval")  # the paper's protocol: 1-30 no-ops
    evaluation_env.reset()
    assert evaluation_env.noops_left.min() >= 1
    run = RunConfig()
    assert (run.unroll_length, run.batch_size, run.frames_per_update) == (20, 32, 20 * 32 * 4)
    step = build_train_step(build_agent(ATARI_SPEC, 6), run)
    assert step.entropy_cost == 0.01 and step.max_grad_norm == 40.0
    assert float(step.current_learning_rate()) == pytest.approx(0.0006)
    assert step.optimizer.epsilon == 0.01 and step.optimizer.rho == 0.99

    config.parse_config(["dmlab/dmlab30_deep.gin"])
    assert make_environment(1, actor_index=4).levels == ["rooms_keys_doors_puzzle"]
    run = RunConfig()
    assert run.unroll_length == 100 and run.total_environment_frames == 1e10
    agent = build_agent(DMLAB_SPEC, 9)
    assert agent.torso_name == "deep" and agent.instruction_encoder is not None
    step = build_train_step(agent, run)
    assert step.reward_clipping == "soft_asymmetric" and step.max_grad_norm is None
    assert step.entropy_cost == pytest.approx(0.0033391318945337044)
    assert float(step.current_learning_rate()) == pytest.approx(0.00031866995608948655)
    assert step.optimizer.epsilon == 0.1


def test_make_train_keeps_the_torso_alive_through_its_objects():
    """`make train`'s file reaches the objects: the T=5, B=8 Adam setting, epsilon 1e-3, and a
    torso that sees each frame centred (a flat screen of any grey reads as a black one)."""
    config.parse_config(["atari/pong_shallow_adam_t5_b8_centred.gin"])
    run = RunConfig()
    assert (run.unroll_length, run.batch_size, run.updates_per_batch) == (5, 8, 1)
    agent = build_agent(ATARI_SPEC, 6)
    assert not agent.use_lstm and agent.torso_name == "shallow"
    step = build_train_step(agent, run)
    assert isinstance(step.optimizer, tf.keras.optimizers.Adam)
    assert step.optimizer.epsilon == pytest.approx(1e-3)
    assert float(step.current_learning_rate()) == pytest.approx(6e-4)
    grey = tf.fill([1, 84, 84, 4], tf.constant(87, tf.uint8))
    black = tf.zeros([1, 84, 84, 4], tf.uint8)
    np.testing.assert_allclose(agent.torso(grey).numpy(), agent.torso(black).numpy(), atol=1e-4)
    config.parse_config(["atari/pong_shallow_adam_t5_b8.gin"])  # ... which its parent does not
    agent = build_agent(ATARI_SPEC, 6)
    assert np.abs(agent.torso(grey).numpy() - agent.torso(black).numpy()).max() > 1e-2


def test_deep_atari_overrides_only_the_torso():
    config.parse_config(["atari/experts_deep.gin"])
    agent = build_agent(ATARI_SPEC, 6)
    assert agent.torso_name == "deep"
    assert build_train_step(agent).entropy_cost == 0.01


def test_bindings_override_files():
    config.parse_config(["atari/experts_shallow.gin"], ["TrainStep.entropy_cost = 0.05",
                                                "AtariBatchedEnv.game = 'breakout'"])
    assert make_environment(1).game == "breakout"
    step = build_train_step(build_agent(ATARI_SPEC, 6))
    assert step.entropy_cost == 0.05


@pytest.mark.parametrize("binding, name", [
    ("Agent.use_lsmt = False", "use_lsmt"),
    ("Agnet.use_lstm = False", "Agnet"),
])
def test_a_typo_names_the_bad_key(binding, name):
    with pytest.raises(ValueError, match=name):
        config.parse_config(["atari/experts_shallow.gin"], [binding])


def test_a_misspelled_gin_file_is_one_line_naming_the_experiments():
    with pytest.raises(config.GinFileNotFoundError) as error:
        config.parse_config(["atari/pong_shalow.gin"])
    message = str(error.value)
    assert "\n" not in message and "did you mean atari/pong_shallow.gin" in message
    assert all(name in message for name in ("catch.gin", "dmlab/dmlab30_deep.gin"))


def test_missing_gin_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.gin"):
        config.parse_config(["nowhere.gin"])


def test_operative_config_is_written(tmp_path):
    config.parse_config(["atari/experts_shallow.gin"])
    build_train_step(build_agent(ATARI_SPEC, 6))
    path = gin_utils.write_operative_config(str(tmp_path))
    assert "TrainStep.entropy_cost = 0.01" in open(path).read()


def _results_rows():
    import importlib.util
    path = config.EXPERIMENTS_DIR / "reproduce_results.py"
    spec = importlib.util.spec_from_file_location("reproduce_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ROWS


@pytest.mark.parametrize("row", sorted(_results_rows()))
def test_each_results_row_parses_and_builds(row):
    """Every row of the README's results table has a command that configures its run."""
    gin_file, bindings, frames, game = _results_rows()[row]
    config.parse_config([gin_file], bindings)
    env = make_environment(1)
    if game is not None:
        assert env.game == game
    assert frames >= 1e5


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: str(p.relative_to(config.EXPERIMENTS_DIR)))
def test_every_experiment_says_what_it_is(path):
    """`train` prints the file's opening comment: each experiment has one."""
    description = config.describe_experiment(str(path))
    assert len(description.split()) >= 8 and not description.startswith("#")


def test_the_description_stops_at_the_first_binding(tmp_path):
    path = tmp_path / "x.gin"
    path.write_text("# What it is.\n# What it reaches.\ninclude 'catch.gin'\n# not this\n")
    assert config.describe_experiment(str(path)) == "What it is.\nWhat it reaches."
    with pytest.raises(FileNotFoundError, match="nowhere.gin"):
        config.describe_experiment("nowhere.gin")


def test_an_earlier_runs_operative_config_still_parses(tmp_path, caplog):
    """`evaluate --logdir` of a run from before the learner's server settings moved to
    `ActorEndpoint`: its operative_config.gin names every old `Learner` parameter; the moved
    ones are read under their new name, the dropped ones are left out, with one warning."""
    old = tmp_path / "operative_config.gin"
    old.write_text("\n".join([
        "include 'catch.gin'",
        "Learner.checkpoint_every_minutes = 10.0",
        "Learner.queue_capacity = 7",
        "Learner.num_actors = 5",
        "Learner.rpc_threads = None",
        "Learner.observation_bounds = {",
        "    'frame': (0, 1),",
        "    'task': (0, 56)}",
        "Learner.is_chief = None",
        ""]))
    try:
        config.parse_config([str(old)])
        assert gin_utils.bound_value("ActorEndpoint.queue_capacity") == 7
        assert gin_utils.bound_value("ActorEndpoint.num_actors") == 5
        assert gin_utils.bound_value("Learner.checkpoint_every_minutes") == 10.0
        assert not gin_utils.is_bound("Learner.rpc_threads")
    finally:
        gin.clear_config()
    assert "Learner.queue_capacity, Learner.num_actors, Learner.rpc_threads" in caplog.text
    text, seen = config.upgrade_settings("Learner.seed = 3\nLearner.log_every_seconds = 1\n")
    assert seen == [] and text == "Learner.seed = 3\nLearner.log_every_seconds = 1\n"
