"""MultiWorkerMirroredStrategy with 2 local worker processes runs several learner steps and
keeps the workers' weights identical."""

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
    assert (tmp_path / "run" / "metrics.jsonl").exists()  # the chief writes the metrics
