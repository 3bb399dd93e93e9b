"""The learner's `tf.distribute` strategy, chosen by gin.

  default       one device (the first GPU if any, else the CPU);
  mirrored      all local GPUs, or `num_cpu_devices` logical CPU devices when there is no
                GPU (how this is tested on a laptop); gradients all-reduced each step;
  multi_worker  several hosts (or processes), described by the TF_CONFIG environment
                variable; each worker feeds its own replicas. TensorFlow's workers talk
                plain gRPC (no TLS, no token): off loopback, a warning says so once;
                run them on a private network;
  tpu           a TPU VM's TPU (`tpu_address = 'local'`, the default) or a TPU or pod slice
                by name, through `TPUClusterResolver`; the step is compiled with XLA.
                TensorFlow drives a TPU single-client: one Python process (on a pod slice,
                on worker 0) runs every host's cores, so a TPU learner is one learner worker
                whose replicas span the slice (`worker_identity`, `batch_split`). Tested
                here with stand-ins (a resolver for a 4-host slice; mirrored over 8 logical
                CPUs with `jit_compile=True`): TPUs cannot run here.

Logical CPU devices must be configured before TensorFlow starts its runtime, so call
`configure_devices` first thing in a process (the learner entry point does).
"""

import json
import logging
import os
from typing import NamedTuple, Optional

import gin
import tensorflow as tf

from impala_tf.rpc.security import is_loopback

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class NoTPUError(RuntimeError):
    """`kind = 'tpu'` where no TPU answers; the message is one line."""


def configure_devices(num_cpu_devices: int) -> None:
    """Splits the CPU into `num_cpu_devices` logical devices (no-op for 1 or with GPUs)."""
    if num_cpu_devices <= 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing and len(existing) >= num_cpu_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"Cannot create {num_cpu_devices} logical CPU devices: TensorFlow already started "
            "its runtime. Configure devices before building any model."
        ) from error


class WorkerIdentity(NamedTuple):
    """Which learner worker this process is: its number among `count` (the chief is 0),
    and whether it is the chief (the one that writes checkpoints, summaries, metrics)."""

    index: int
    count: int
    is_chief: bool


def is_single_client(strategy: tf.distribute.Strategy) -> bool:
    """Whether this one process drives all of `strategy`'s replicas, on every host: a TPU.
    A pod slice's `TPUClusterResolver` lists the slice's hosts as `worker` tasks, but they
    are TPU servers that worker 0's process drives, not learner processes."""
    return (isinstance(strategy, tf.distribute.TPUStrategy) or isinstance(
        getattr(strategy, "cluster_resolver", None),
        tf.distribute.cluster_resolver.TPUClusterResolver))


def worker_identity(strategy: tf.distribute.Strategy) -> WorkerIdentity:
    """This process's place in `strategy`'s cluster (TF_CONFIG's, for `multi_worker`): the
    `chief` task if the cluster has one, else worker 0, is the chief and number 0; the
    workers follow in TF_CONFIG's order. Without a cluster, and under a TPU (single-client,
    `is_single_client`): the only worker, the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or is_single_client(strategy):
        return WorkerIdentity(0, 1, True)
    has_chief = bool(cluster.get("chief"))
    count = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    if task_type == "chief":
        return WorkerIdentity(0, count, True)
    if task_type != "worker":
        raise ValueError(f"TF_CONFIG task type {task_type!r}: a learner runs as 'chief' or "
                         "'worker'.")
    index = task_id + (1 if has_chief else 0)
    return WorkerIdentity(index, count, index == 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many workers (learner processes) `strategy` spans: 1 unless it has a cluster."""
    return worker_identity(strategy).count


class BatchSplit(NamedTuple):
    """How a batch of B unrolls is divided: `workers` learner processes each take
    `local_batch_size` = B / workers unrolls, updated on in minibatches of `minibatch_size`
    (`RunConfig.num_minibatches`), each split over the worker's `local_replicas` replicas,
    `per_replica` unrolls each. `replicas` counts every worker's (`num_replicas_in_sync`)."""

    workers: int
    replicas: int
    local_replicas: int
    local_batch_size: int
    minibatch_size: int
    per_replica: int

    def describe(self, strategy_name: str) -> str:
        """One line for the learner's start-up output."""
        return (f"{strategy_name}: {self.workers} learner worker(s), {self.replicas} "
                f"replica(s); each update takes {self.minibatch_size * self.workers} unrolls, "
                f"{self.per_replica} per replica")


def batch_split(strategy: tf.distribute.Strategy, batch_size: int,
                num_minibatches: int = 1) -> BatchSplit:
    """`BatchSplit` of `batch_size` unrolls under `strategy`; ValueError in one line, at
    start-up, when they do not divide evenly (a TPU slice's B must be a multiple of its
    cores: 32 on a v3-32)."""
    workers = worker_identity(strategy).count
    replicas = int(strategy.num_replicas_in_sync)
    local_replicas = max(1, replicas // workers)
    where = (f"{replicas} replicas on {workers} learner workers" if workers > 1
             else f"{replicas} replicas")
    if batch_size % (workers * num_minibatches * local_replicas):
        raise ValueError(
            f"RunConfig.batch_size = {batch_size} does not split over {where}"
            + (f" in {num_minibatches} minibatches" if num_minibatches > 1 else "")
            + f": use a multiple of {workers * num_minibatches * local_replicas}.")
    local = batch_size // workers
    minibatch = local // num_minibatches
    return BatchSplit(workers, replicas, local_replicas, local, minibatch,
                      minibatch // local_replicas)


def unsecured_cluster_warning(tf_config: str) -> Optional[str]:
    """One line when TF_CONFIG's cluster has an address off loopback, else None: the
    workers' gradients and weights then cross the network without TLS or a token."""
    try:
        cluster = json.loads(tf_config or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        return None
    outside = [str(address) for addresses in cluster.values() for address in addresses
               if not is_loopback(str(address))]
    if not outside:
        return None
    return (f"TF_CONFIG's learner workers ({', '.join(outside)}) exchange gradients and "
            "weights over TensorFlow's plain gRPC, without TLS or a token: run them on a "
            "private network (a VPC, a Kubernetes namespace with a NetworkPolicy) that no "
            "one else can reach.")


@gin.configurable
def make_strategy(
    kind: str = "default", num_cpu_devices: int = 2, tpu_address: str = "local"
) -> tf.distribute.Strategy:
    """The strategy named `kind` (see the module docstring). `tpu_address`: 'local' (the TPU
    VM's own TPU), a TPU or pod slice's name, or grpc://HOST:8470."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        # Physical, not logical: listing logical devices would start the runtime, after
        # which the CPU can no longer be split.
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        configure_devices(num_cpu_devices)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:num_cpu_devices]
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if kind == "multi_worker":
        warning = unsecured_cluster_warning(os.environ.get("TF_CONFIG", ""))
        if warning:
            logging.warning("%s", warning)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
            if tpu_address != "local":  # 'local' needs no connection: the TPU is this VM's
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise NoTPUError(
                f"make_strategy.kind = 'tpu' found no TPU at {tpu_address!r} ({cause}). "
                "On a TPU VM leave make_strategy.tpu_address = 'local'; for a pod slice, run "
                "the learner on its worker 0 with the slice's name.") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {kind!r}; expected one of {STRATEGIES}.")
