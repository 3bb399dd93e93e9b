"""MultiWorkerMirroredStrategy with 2 local worker processes runs several learner steps and
keeps the workers' weights identical; each worker knows from TF_CONFIG which it is, and only
the chief writes into the run's logdir."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ports import reserved_ports

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_synthetic_workers(tmp_path, *extra):
    workers = [f"127.0.0.1:{port}" for port in reserved_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_process.py"),
             str(tmp_path / "run"), str(index), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = []
    for p in processes:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            pytest.fail("multi-worker processes did not finish")
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _assert_same_weights(run, moved=True):
    """The two workers' weights, tensor by tensor: equal to each other, and (`moved`) not
    the ones they started from."""
    workers = [np.load(run / f"weights_worker{i}.npz") for i in range(2)]
    count = len([k for k in workers[0].files if k.startswith("final_")])
    assert count > 4 and len(workers[1].files) == len(workers[0].files)
    for i in range(count):
        np.testing.assert_allclose(workers[1][f"final_{i}"], workers[0][f"final_{i}"],
                                   rtol=1e-6, atol=1e-7, err_msg=f"weight {i}")
        np.testing.assert_array_equal(workers[1][f"initial_{i}"], workers[0][f"initial_{i}"])
    if moved:
        assert any(not np.allclose(workers[0][f"final_{i}"], workers[0][f"initial_{i}"])
                   for i in range(count))


def test_a_stop_on_one_worker_stops_every_worker_after_the_same_step(tmp_path):
    """Worker 1 alone is asked to stop after its 4th batch: the request rides the next
    step's all-reduce, and both leave after step 5 (alone, worker 0 would wait in the
    all-reduce for ever)."""
    results = _run_synthetic_workers(tmp_path, "4")
    assert [r["steps"] for r in results] == [5, 5]
    _assert_same_weights(tmp_path / "run")


def test_two_workers_train_in_lockstep(tmp_path):
    results = _run_synthetic_workers(tmp_path)
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["steps"] for r in results] == [3, 3]
    assert results[0]["frames"] == 3 * 4 * 4  # the global batch of 4 unrolls of 4 steps
    _assert_same_weights(tmp_path / "run")
    assert [r["identity"] for r in results] == [[0, 2, True], [1, 2, False]]
    assert [r["is_chief"] for r in results] == [True, False]
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").exists()  # the chief writes the metrics
    assert (run / "checkpoints").is_dir() and (run / "worker_1" / "checkpoints").is_dir()
    assert not (run / "worker_1" / "metrics.jsonl").exists()


def _start_workers(logdir, tmp_path, tag, max_frames, bindings=()):
    """Two learner workers through the real command, each with its own TF_CONFIG and its
    own actor processes, on one logdir; their output goes to files."""
    workers = [f"127.0.0.1:{port}" for port in reserved_ports(2)]
    processes, outputs = [], []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        output = tmp_path / f"{tag}_worker{index}.log"
        with open(output, "w") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "impala_tf.train", "--role=all", "--gin_file=catch.gin",
                 "--gin_bindings=make_strategy.kind = 'multi_worker'",
                 "--gin_bindings=Learner.log_every_seconds = 2.0",
                 f"--logdir={logdir}", f"--max_frames={max_frames}"]
                + [f"--gin_bindings={b}" for b in bindings],
                stdout=out, stderr=subprocess.STDOUT, text=True,
                env=dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="")))
        outputs.append(output)
    return processes, outputs


def _wait_all(processes, timeout):
    deadline = time.time() + timeout
    for p in processes:
        try:
            p.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            pytest.fail("learner workers did not finish")


def _two_workers_learn_catch(logdir, tmp_path, tag, bindings=()):
    """Two workers train Catch for 200k frames, each with its actors (ids 0-1 and 2-3);
    the chief's metrics.jsonl records, after checking that both exited cleanly and that
    the last mean return is near-optimal."""
    processes, outputs = _start_workers(logdir, tmp_path, tag, 200_000, bindings)
    _wait_all(processes, 420)
    texts = [o.read_text() for o in outputs]
    for p, text in zip(processes, texts):
        assert p.returncode == 0, text[-3000:]
    assert "(actors 0 to 1)" in texts[0] and "(actors 2 to 3)" in texts[1]
    records = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    # Learnt: the mean return of every episode in the last quarter of the frames (random
    # play: about -0.6; optimal: 1), not one log window's few episodes.
    last = [r for r in records if r["episodes"] and r["env_frames"] >= 150_000]
    episodes = sum(r["episodes"] for r in last)
    mean = sum(r["episode_return_mean"] * r["episodes"] for r in last) / max(1, episodes)
    assert episodes >= 100 and mean >= 0.8, [(r["env_frames"], r["episode_return_mean"])
                                             for r in records if r["episodes"]]
    return records


def test_two_workers_learn_catch_through_the_train_command_and_stop_together(tmp_path):
    """Two `python -m impala_tf.train --role=all` workers (multi_worker strategy, each with
    its actors) learn Catch; only the chief writes metrics. Restarted, both resume from the
    chief's checkpoint; when one is killed the other stops with one line, after the chief
    saved the last whole step."""
    logdir = tmp_path / "run"
    records = _two_workers_learn_catch(logdir, tmp_path, "first")
    assert records[-1]["env_frames"] >= 200_000
    assert not (logdir / "worker_1" / "metrics.jsonl").exists()
    assert (logdir / "worker_1" / "checkpoints").is_dir()
    steps = records[-1]["learner_steps"]

    processes, outputs = _start_workers(logdir, tmp_path, "second", 2_000_000)
    deadline = time.time() + 300
    while time.time() < deadline:  # both resumed and trained on
        texts = [o.read_text() for o in outputs]
        if all(len(re.findall(r"^frames ", t, re.M)) >= 3 for t in texts):
            break
        assert all(p.poll() is None for p in processes), texts
        time.sleep(1)
    resumed = [re.search(r"resumed from (\S+): step (\d+)", t) for t in texts]
    assert all(resumed), texts
    assert resumed[0].group(1) == resumed[1].group(1)  # the chief's checkpoint, on both
    assert resumed[0].group(1).startswith(str(logdir / "checkpoints"))
    assert int(resumed[0].group(2)) == steps
    processes[1].send_signal(signal.SIGKILL)
    try:
        processes[0].wait(120)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        pytest.fail("the surviving worker waited for ever on its lost peer")
    survivor = outputs[0].read_text()
    assert processes[0].returncode == 1
    last = survivor.strip().splitlines()[-1]
    assert last.startswith("impala_tf: Learner worker 0 of 2 lost the cluster"), survivor[-3000:]
    assert "the chief saved step" in last and "start every worker again" in last
    assert "Traceback" not in survivor


def test_two_workers_learn_catch_with_central_inference(tmp_path):
    """Central inference under multi_worker: each worker acts for its own environment
    actors (ids 0-1 and 2-3) with its copy of the agent, and Catch is learnt."""
    records = _two_workers_learn_catch(tmp_path / "run", tmp_path, "central",
                                       ["Launcher.inference = 'central'",
                                        "Launcher.num_actors = 2"])
    assert sorted(records[-1]["accepted_unrolls_by_actor"]) == ["0", "1"]  # the chief's own


class _Clustered:
    """A strategy's cluster, as MultiWorkerMirroredStrategy exposes it."""

    def __init__(self, cluster, task_type, task_id):
        import tensorflow as tf
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


@pytest.mark.parametrize("cluster, task_type, task_id, identity", [
    ({"worker": ["a:1", "b:1", "c:1"]}, "worker", 0, (0, 3, True)),
    ({"worker": ["a:1", "b:1", "c:1"]}, "worker", 2, (2, 3, False)),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "chief", 0, (0, 3, True)),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 0, (1, 3, False)),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 1, (2, 3, False)),
])
def test_the_worker_identity_comes_from_the_cluster(cluster, task_type, task_id, identity):
    from impala_tf.distribute import worker_identity
    assert tuple(worker_identity(_Clustered(cluster, task_type, task_id))) == identity


def test_without_a_cluster_the_one_worker_is_the_chief():
    import tensorflow as tf
    from impala_tf.distribute import worker_identity
    assert tuple(worker_identity(tf.distribute.get_strategy())) == (0, 1, True)


def test_workers_off_loopback_are_warned_about_their_plain_grpc():
    from impala_tf.distribute import unsecured_cluster_warning
    local = {"cluster": {"worker": ["127.0.0.1:2222", "localhost:2223", "[::1]:2224"]},
             "task": {"type": "worker", "index": 0}}
    assert unsecured_cluster_warning(json.dumps(local)) is None
    assert unsecured_cluster_warning("") is None
    remote = {"cluster": {"chief": ["10.0.0.5:2222"], "worker": ["127.0.0.1:2223",
                                                                 "learner-1.example:2222"]}}
    warning = unsecured_cluster_warning(json.dumps(remote))
    assert "10.0.0.5:2222, learner-1.example:2222" in warning and "without TLS" in warning
    assert "127.0.0.1" not in warning and "\n" not in warning
