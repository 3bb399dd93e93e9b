"""The learner's worker and replica arithmetic under each strategy, a TPU pod slice included.

A Cloud TPU pod slice is driven single-client: worker 0's one Python process runs every host's
cores through `TPUClusterResolver`, whose cluster spec lists the slice's hosts as `worker`
tasks. The stand-in below answers as that resolver does on worker 0 of a 4-host, 32-core slice
(a v3-32), read against TensorFlow's `TPUClusterResolver` (`cluster_spec` from the Cloud TPU
API's network endpoints, `num_accelerators` per host); the strategy stand-in exposes what
`TPUStrategy` built on it does to the learner (`cluster_resolver`, `num_replicas_in_sync`).
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from impala_tf.distribute import (BatchSplit, batch_split, is_single_client, num_workers,
                                  worker_identity)
from impala_tf.learning.learner import Learner
from impala_tf.run_config import RunConfig

HOSTS, CORES_PER_HOST = 4, 8


class PodSliceResolver(tf.distribute.cluster_resolver.TPUClusterResolver):
    """`TPUClusterResolver(tpu='my-v3-32')` on the slice's worker 0, without the Cloud API."""

    def __init__(self, hosts=HOSTS, cores_per_host=CORES_PER_HOST):  # noqa: super() dials the API
        self._workers = [f"10.130.0.{i + 2}:8470" for i in range(hosts)]
        self._cores = cores_per_host
        self._tpu = "my-v3-32"
        self.task_type, self.task_id = "worker", 0
        self.rpc_layer = "grpc"

    def cluster_spec(self):
        return tf.train.ClusterSpec({"worker": self._workers})

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        return {"TPU": self._cores}

    def master(self, task_type=None, task_id=None, rpc_layer=None):
        return f"grpc://{self._workers[0]}"


class SliceStrategy:
    """What `TPUStrategy(PodSliceResolver())` shows the learner: its resolver and one replica
    per core of every host."""

    def __init__(self, resolver):
        self.cluster_resolver = resolver
        self.num_replicas_in_sync = (len(resolver.cluster_spec().job_tasks("worker"))
                                     * resolver.num_accelerators()["TPU"])


class MultiWorker:
    """What `MultiWorkerMirroredStrategy` shows: the same 4 hosts in TF_CONFIG, 8 GPUs each."""

    def __init__(self):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": [f"10.130.0.{i + 2}:2222" for i in range(4)]}),
            task_type="worker", task_id=0)
        self.num_replicas_in_sync = 32


def test_a_pod_slice_is_one_learner_worker_whose_replicas_span_its_hosts():
    slice_ = SliceStrategy(PodSliceResolver())
    assert slice_.num_replicas_in_sync == 32
    assert is_single_client(slice_)
    assert tuple(worker_identity(slice_)) == (0, 1, True)
    assert num_workers(slice_) == 1  # the launcher's actor ids: Launcher.num_actors x 1
    # The whole batch goes over every core: B=32 puts one unroll on each of the 32.
    assert batch_split(slice_, 32) == BatchSplit(workers=1, replicas=32, local_replicas=32,
                                                 local_batch_size=32, minibatch_size=32,
                                                 per_replica=1)
    assert batch_split(slice_, 256, num_minibatches=2).per_replica == 4


def test_the_same_hosts_as_tf_config_workers_are_four_learner_workers():
    """The contrast: four MultiWorkerMirrored learner processes each take a quarter."""
    strategy = MultiWorker()
    assert not is_single_client(strategy)
    assert tuple(worker_identity(strategy)) == (0, 4, True)
    assert batch_split(strategy, 32) == BatchSplit(workers=4, replicas=32, local_replicas=8,
                                                   local_batch_size=8, minibatch_size=8,
                                                   per_replica=1)


@pytest.mark.parametrize("strategy, batch_size, minibatches, message", [
    (SliceStrategy(PodSliceResolver()), 48, 1,
     "RunConfig.batch_size = 48 does not split over 32 replicas: use a multiple of 32."),
    (SliceStrategy(PodSliceResolver()), 32, 2,
     "RunConfig.batch_size = 32 does not split over 32 replicas in 2 minibatches: use a "
     "multiple of 64."),
    (MultiWorker(), 16, 1, "RunConfig.batch_size = 16 does not split over 32 replicas on 4 "
     "learner workers: use a multiple of 32."),
])
def test_a_batch_that_does_not_divide_is_named_in_one_line(strategy, batch_size, minibatches,
                                                           message):
    with pytest.raises(ValueError) as error:
        batch_split(strategy, batch_size, minibatches)
    assert str(error.value) == message


def test_the_learner_refuses_such_a_batch_before_building_anything(tmp_path):
    """Mirrored over this machine's two logical CPUs: B=3 fails at construction, in one
    line, and frees its logdir for the next learner."""
    from impala_tf.distribute import make_strategy
    spec = {"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    with pytest.raises(ValueError) as error:
        Learner(spec, 3, str(tmp_path), strategy=strategy,
                run_config=RunConfig(unroll_length=4, batch_size=3))
    assert str(error.value).splitlines()[0] == ("RunConfig.batch_size = 3 does not split over "
                                                "2 replicas: use a multiple of 2.")
    learner = Learner(spec, 3, str(tmp_path), strategy=strategy,
                      run_config=RunConfig(unroll_length=4, batch_size=4))
    assert learner.local_batch_size == 4 and learner.split.per_replica == 2
    learner.close()


# -- through the training command ---------------------------------------------------------------

def _train_catch(logdir, bindings, frames=300_000):
    """`python -m impala_tf.train` on Catch with `bindings`; its output and metrics records."""
    command = [sys.executable, "-m", "impala_tf.train", "--gin_file=catch.gin",
               f"--logdir={logdir}", "--gin_bindings=Learner.log_every_seconds = 2",
               f"--gin_bindings=RunConfig.total_environment_frames = {frames}",
               *[f"--gin_bindings={b}" for b in bindings]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return result.stdout, records


def _assert_learnt(records, frames=300_000):
    tail = [r for r in records if r["episodes"] and r["env_frames"] >= 0.8 * frames]
    episodes = sum(r["episodes"] for r in tail)
    mean = sum(r["episode_return_mean"] * r["episodes"] for r in tail) / max(1, episodes)
    assert episodes >= 100 and mean >= 0.8, [(r["env_frames"], r["episode_return_mean"])
                                             for r in records if r["episodes"]]


def test_a_slices_eight_cores_stand_in_learns_catch_through_the_train_command(tmp_path):
    """Mirrored over 8 logical CPUs with every replica's step XLA-compiled: one learner
    worker, B=16 split 2 unrolls per replica as an 8-core TPU would split it; Catch learnt,
    parameters published from the publisher thread."""
    out, records = _train_catch(str(tmp_path / "run"), [
        "make_strategy.kind = 'mirrored'", "make_strategy.num_cpu_devices = 8",
        "Learner.jit_compile = True"])
    assert ("learner strategy mirrored: 1 learner worker(s), 8 replica(s); each update takes "
            "16 unrolls, 2 per replica") in out
    _assert_learnt(records)
    lags = [r["publish_lag_mean"] for r in records if r["publish_lag_mean"] is not None]
    assert lags and max(lags) < 5  # published within a few updates of their step


def test_mirrored_with_central_inference_learns_catch_through_the_train_command(tmp_path):
    """The multi-GPU path as a GPU host runs it (mirrored, here over 2 logical CPUs, no XLA)
    with central inference acting on the strategy's first device: Catch learnt."""
    out, records = _train_catch(str(tmp_path / "run"), [
        "make_strategy.kind = 'mirrored'", "make_strategy.num_cpu_devices = 2",
        "Launcher.inference = 'central'"])
    assert ("learner strategy mirrored: 1 learner worker(s), 2 replica(s); each update takes "
            "16 unrolls, 8 per replica") in out
    _assert_learnt(records)
    assert records[-1]["rejected_unrolls"] == 0


def test_the_accelerator_checks_step_runs_here_on_the_cpu():
    """experiments/accelerator_step.py, which device_check.sh and tpu_check.sh run first on a
    GPU or a TPU, runs here as it is (it must not have gone stale when a TPU first comes)."""
    result = subprocess.run(
        [sys.executable, "experiments/accelerator_step.py", "--device=CPU"],
        capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "CPU: 1 replica(s), 32 unroll(s) per replica for B=32"
    assert "13 of 13 variables changed" in lines[1]
    assert lines[2].startswith("central inference: 8 actions on the default device")
