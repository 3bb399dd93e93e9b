"""Population-based training through a real Ray runtime on loopback: `python -m impala_tf.pbt`
runs 4 Catch members on a two-node local Ray cluster (Ray's own test utility), one of them
given a learning rate that cannot learn. The loser copies a better member (its logdir records
the copy, and its run goes on from the donor's frames and return), every evolved
hyperparameter moves by exactly 1.2, 1/1.2 or 1, no member evolves during its burn-in, members
run on both nodes, and the best member learns. Without Ray the command says how to get it, and
training without PBT never imports Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LR, ENTROPY = "make_optimizer.learning_rate", "TrainStep.entropy_cost"
BURN_IN = 20_000


def _events(logdir: Path):
    """Each member's start events, by the member's run directory."""
    members = {}
    for events in sorted(logdir.glob("population/*/run/pbt.jsonl")):
        members[events.parent] = [json.loads(line) for line in events.read_text().splitlines()]
    return members


def _metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_without_pbt_never_imports_ray():
    code = ("import sys, impala_tf.train, impala_tf.launcher, impala_tf.evaluate; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_ray_the_command_says_how_to_get_it(tmp_path):
    (tmp_path / "ray").mkdir()  # a `ray` that cannot be imported, ahead of the real one
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.pbt", f"--logdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path}:{ROOT}"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "impala_tf: population-based training needs Ray Tune: pip install 'impala_tf[pbt]' "
        "(or `make install`).")


@pytest.fixture
def two_node_cluster():
    """Two Ray nodes of 1 CPU on this host. Ray waits a fixed time for its GCS to start; on a
    loaded machine (a random-order run beside a Bazel run) it once timed out, so the start is
    tried a second time before the test fails."""
    from ray.cluster_utils import Cluster
    for attempt in range(2):
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            break
        except RuntimeError:
            if attempt:
                raise
            subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120,
                           env=dict(os.environ, PATH=os.path.dirname(sys.executable) + ":"
                                    + os.environ.get("PATH", "")))
    yield cluster
    cluster.shutdown()


def test_a_population_of_four_on_two_nodes_copies_explores_and_learns(tmp_path,
                                                                      two_node_cluster):
    members = [{LR: 0.01, ENTROPY: 0.01}, {LR: 0.02, ENTROPY: 0.005},
               {LR: 0.005, ENTROPY: 0.01}, {LR: 1e-7, ENTROPY: 0.01}]  # the last cannot learn
    bindings = [f"Population.members = {members!r}", "Population.max_frames = 6e4",
                "Population.report_every_episodes = 500", "Population.seed = 3",
                f"EvolutionRule.burn_in_frames = {BURN_IN}",
                "EvolutionRule.episodes_per_step = 1500", "Learner.log_every_seconds = 1"]
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.pbt", "--gin_file=pbt/catch_pbt.gin",
         f"--logdir={tmp_path}", f"--address={two_node_cluster.address}",
         *[f"--gin_bindings={b}" for b in bindings]],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    _assert_the_population_evolved(tmp_path)


def _assert_the_population_evolved(logdir: Path):
    members_events = _events(logdir)
    assert len(members_events) == 4
    nodes = {event["node_id"] for events in members_events.values() for event in events}
    assert len(nodes) == 2  # members ran on both nodes

    by_trial = {events[0]["trial_id"]: run for run, events in members_events.items()}
    loser = next(run for run, events in members_events.items()
                 if events[0]["hyperparameters"][LR] == 1e-7)
    copies = []
    for run, events in members_events.items():
        for before, event in zip(events, events[1:]):
            step = event["last_step"]
            assert step is not None  # every restart after the first is an evolution step
            donor = by_trial[step["donor"]] if step["donor"] else run
            # Explore: each evolved hyperparameter by exactly 1.2, 1/1.2 or 1 ...
            assert set(step["factors"]) == {LR, ENTROPY}
            for name, factor in step["factors"].items():
                assert factor in (1.2, 1 / 1.2, 1.0)
            # ... from the donor's hyperparameters at that step (or its own), which the
            # donor ran with.
            source = step["from_hyperparameters"]
            assert source in [e["hyperparameters"] for e in members_events[donor]]
            assert event["hyperparameters"] == {
                name: source[name] * step["factors"][name] for name in source}
            if step["donor"]:
                assert step["donor_score"] > step["score"] + 0.05  # the paper's margin
                copies.append((run, donor, event))
    # A step that keeps the member's weights resumes from its newest checkpoint, the one
    # it reported the step with: no frames lost.
    for run, events in members_events.items():
        records = _metrics(run)
        for event in events[1:]:
            step = event["last_step"]
            if step is not None and step["donor"] is None:
                resumed = [r["env_frames"] for r in records if r["time"] > event["time"]][:1]
                assert not resumed or step["at_frames"] <= resumed[0] <= step["at_frames"] + 2e4
    # No evolution during burn-in: every step came after the member's own burn-in frames.
    steps = [e["last_step"] for events in members_events.values() for e in events[1:]]
    assert steps and all(step["at_frames"] >= BURN_IN for step in steps)
    # Exploit: the loser copied a better member: it restarted from a copy of the donor's
    # checkpoint with the donor's hyperparameters (explored), and at once played as the
    # donor does, which its own learning rate (1e-7, at most x1.2 a step) never could.
    loser_copies = [c for c in copies if c[0] == loser]
    assert loser_copies, members_events[loser]
    _, donor, event = loser_copies[0]
    loser_id = members_events[loser][0]["trial_id"]
    assert Path(event["from_checkpoint"]).name.startswith(f"pbt_copy_for_{loser_id}_")
    assert event["hyperparameters"][LR] > 1e-4
    records = _metrics(loser)
    before = [r["episode_return_mean"] for r in records
              if r["time"] < event["time"] and r["episode_return_mean"] is not None]
    after = [r["episode_return_mean"] for r in records
             if r["time"] > event["time"] and r["episode_return_mean"] is not None]
    assert max(before) < 0, before  # chance level: it could not learn
    # From its first record after the copy it plays nearer the donor's score than its own.
    step = event["last_step"]
    assert after[0] > (step["score"] + step["donor_score"]) / 2, (after, step)
    assert after[-1] > 0.5, after
    # The population's best member learnt Catch.
    best = max(max((r["episode_return_mean"] or -1) for r in _metrics(run))
               for run in members_events)
    assert best >= 0.8
