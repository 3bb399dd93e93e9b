"""MultiWorkerMirroredStrategy with 2 local worker processes runs several learner steps and
keeps the workers' weights identical; each worker knows from TF_CONFIG which it is, and only
the chief writes into the run's logdir."""

import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_train_in_lockstep(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_process.py"),
             str(tmp_path / "run"), str(index)],
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
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["steps"] for r in results] == [3, 3]
    assert results[0]["frames"] == 3 * 4 * 4  # the global batch of 4 unrolls of 4 steps
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
    assert [r["identity"] for r in results] == [[0, 2, True], [1, 2, False]]
    assert [r["is_chief"] for r in results] == [True, False]
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").exists()  # the chief writes the metrics
    assert (run / "checkpoints").is_dir() and (run / "worker_1" / "checkpoints").is_dir()
    assert not (run / "worker_1" / "metrics.jsonl").exists()


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
