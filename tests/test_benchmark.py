"""The benchmark: its bound is the stated arithmetic, and a short run on Catch produces
consistent figures for every stage (figures are not judged: this machine is shared)."""

import json
import os
import subprocess
import sys

import pytest

from impala_tf.tools.report import bound, physical_limit


def _benchmark(out, *flags):
    """`python -m impala_tf.tools.benchmark` on Catch with `flags`, figures to `out`; it must
    succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "impala_tf.tools.benchmark", "--gin_file=catch.gin", *flags,
         f"--json={out}"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_bound_is_cores_over_the_cpu_cost_of_a_frame():
    env = {"core_s_per_frame": 100e-6}
    actor = {"core_s_per_frame": 250e-6}  # inference = 150 us on top of the env
    learner = {"core_s_per_frame": 250e-6}
    b = bound(env, actor, learner, num_cores=2)
    assert b["inference_core_s_per_frame"] == pytest.approx(150e-6)
    assert b["frames_per_s"] == pytest.approx(2 / 500e-6)  # 4,000 frames/s
    # An actor measured cheaper than its envs (noise) costs no inference, not negative.
    assert bound(env, {"core_s_per_frame": 90e-6}, learner, 1)["frames_per_s"] == \
        pytest.approx(1 / 350e-6)


def test_the_physical_limit_takes_the_cheapest_ale_threads_and_the_raw_work():
    envs = {"default": {"core_s_per_frame": 120e-6}, "1": {"core_s_per_frame": 115e-6},
            "2": {"core_s_per_frame": 95e-6}}
    limit = physical_limit(envs, {"core_s_per_frame": 60e-6}, {"core_s_per_frame": 245e-6}, 2)
    assert limit["ale_threads"] == "2"
    assert limit["frames_per_s"] == pytest.approx(2 / 400e-6)


def test_end_to_end_runs_both_inference_modes_and_reports_their_actors(tmp_path):
    """Catch trained end to end for a short window in each mode: frames flow, and the
    environment actors of central inference hold no TensorFlow (well under 250 MB)."""
    out = tmp_path / "figures.json"
    result = _benchmark(out, "--seconds=2", "--stages=end_to_end")
    runs = json.loads(out.read_text())["stages"]["end_to_end"]
    assert [r["inference"] for r in runs] == ["actor", "central"]
    for r in runs:
        # Launcher's defaults: 2 actors, twice as many environment actors.
        assert r["num_actors"] == {"actor": 2, "central": 4}[r["inference"]]
        assert r["frames_per_s"] > 0
    actor_mb, central_mb = (max(r["actor_rss_mb"]) for r in runs)
    assert central_mb < 250 < actor_mb
    assert "end-to-end (central inference), 4 actors" in result.stdout


def test_a_short_run_on_catch_reports_every_stage(tmp_path):
    out = tmp_path / "figures.json"
    result = _benchmark(out, "--seconds=1", "--stages=env,forward,actor,learner,vtrace,transport")
    figures = json.loads(out.read_text())
    stages = figures["stages"]
    for name in ("env", "actor"):
        assert stages[name]["num_envs"] == 8 and stages[name]["frames_per_s"] > 0
    # The actor steps the same envs and also runs the policy: it costs more CPU per frame.
    assert stages["actor"]["core_s_per_frame"] > stages["env"]["core_s_per_frame"]
    assert [r["replicas"] for r in stages["learner"]] == [1, 2]
    for r in stages["learner"]:
        assert r["frames_per_s"] == pytest.approx(
            r["batch_size"] * r["unroll_length"] / r["seconds_per_update"], rel=1e-6)
    assert set(stages["vtrace"]["microseconds_per_call"]) == {
        f"T={t} {m}" for t in (20, 100) for m in ("eager", "tf.function", "xla")}
    transport = stages["transport"]
    assert transport["grpc_unrolls_per_s"] > 0
    assert transport["grpc_mb_per_s"] == pytest.approx(
        transport["grpc_unrolls_per_s"] * transport["unroll_bytes"] / 1e6, rel=1e-6)
    b = figures["bound"]
    assert b["frames_per_s"] == pytest.approx(b["cores"] / (
        b["env_core_s_per_frame"] + b["inference_core_s_per_frame"]
        + b["learning_core_s_per_frame"]), rel=1e-6)
    assert b["learning_core_s_per_frame"] == stages["learner"][0]["core_s_per_frame"]
    assert "bound on" in result.stdout and "learner, mirrored (2 replicas)" in result.stdout
    forward = stages["forward"]
    assert forward["num_envs"] == 8 and forward["core_s_per_frame"] == min(
        forward["graph_core_s_per_frame"], forward["xla_core_s_per_frame"])
    limit = figures["physical_limit"]  # Catch: no ALE threads to sweep
    assert limit["ale_threads"] == "default" and limit["frames_per_s"] == pytest.approx(
        limit["cores"] / (stages["env"]["core_s_per_frame"] + forward["core_s_per_frame"]
             + stages["learner"][0]["core_s_per_frame"]), rel=1e-6)
    assert "physical limit on" in result.stdout and "forward pass alone" in result.stdout


def test_the_ingest_stage_serves_every_stream_and_reports_its_figures(tmp_path):
    """Light actor streams into a real learner (Catch: nothing stacked) whose step does
    nothing; the figures land under the top-level key `ingest`."""
    out = tmp_path / "ingest.json"
    result = _benchmark(out, "--seconds=2", "--stages=ingest", "--ingest_actors=3")
    ingest = json.loads(out.read_text())["ingest"]
    assert ingest["actors"] == 3 and ingest["actors_served"] == 3
    assert ingest["rejected_unrolls"] == 0 and ingest["frames_per_s"] > 0
    assert ingest["learner_cpu_us_per_frame"] > 0 and ingest["wire_bytes_per_frame"] > 0
    assert "ingest: 3 of 3 actor streams served" in result.stdout


def test_the_ingest_streams_unrolls_pass_the_learners_validator():
    """What the light clients send is what an honest packed actor sends: the validator of
    Pong's spec takes it and rebuilds stacks that shift by one frame a step."""
    import numpy as np

    from impala_tf.rpc.validation import UnrollValidator
    from impala_tf.tools.ingest import honest_unroll
    spec = {"observation/frame": (np.dtype(np.uint8), (21, 84, 84, 4)),
            "action": (np.dtype(np.int32), (21,)), "reward": (np.dtype(np.float32), (21,)),
            "discount": (np.dtype(np.float32), (21,)),
            "episode_start": (np.dtype(np.bool_), (21,)),
            "behaviour_logits": (np.dtype(np.float32), (21, 6))}
    validator = UnrollValidator(spec, 6, 8 << 20, observation_bounds={"frame": (0, 255)},
                                num_actors=8, stacked_observations={"frame": 1})
    first, continued = honest_unroll(spec, {"frame": 1}, actor_id=5)
    whole, again = honest_unroll(spec, {"frame": 1}, actor_id=5, pack=False)
    assert whole == again and len(continued) < len(first) < 0.3 * len(whole)
    stream = validator.new_stream()
    for message in (first, continued, continued, whole):  # a stream sends first, then next
        unroll, _ = validator(message, stream)
        frames = np.asarray(unroll.flat()["observation/frame"])
        assert unroll.actor_id == 5
        np.testing.assert_array_equal(frames[1:, ..., :-1], frames[:-1, ..., 1:])


def test_the_loop_stage_measures_both_ways_of_publishing(tmp_path):
    """`--stages=loop` on Catch: the loop's cost besides the update, publishing from the loop
    and from the publisher thread; every update published or superseded, none lost."""
    out = tmp_path / "figures.json"
    result = _benchmark(out, "--seconds=1", "--stages=loop")
    loop = json.loads(out.read_text())["stages"]["loop"]
    for mode, runs in (("caller", loop["caller"]), ("thread", loop["thread"])):
        assert runs["publish"] == mode and runs["updates"] >= 4
        assert 0 < runs["loop_seconds_per_update"] < runs["seconds_per_update"]
        # Three runs of the loop (warm-up, timing, measured) plus the start-up publication.
        total = 3 + 2 + runs["updates"] + 1
        assert runs["published"] + runs["superseded"] == total, runs
    assert loop["caller"]["superseded"] == 0 and loop["caller"]["publish_lag_mean"] is None
    assert loop["thread"]["publish_lag_mean"] is not None
    assert "learner loop, publishing from the thread" in result.stdout
