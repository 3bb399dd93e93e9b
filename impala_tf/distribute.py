"""The learner's `tf.distribute` strategy, chosen by gin.

  default       one device (the first GPU if any, else the CPU);
  mirrored      all local GPUs, or `num_cpu_devices` logical CPU devices when there is no
                GPU (how this is tested on a laptop); gradients all-reduced each step;
  multi_worker  several hosts (or processes), described by the TF_CONFIG environment
                variable; each worker feeds its own replicas. TensorFlow's workers talk
                plain gRPC (no TLS, no token): off loopback, a warning says so once;
                run them on a private network;
  tpu           a TPU (pod) through `TPUClusterResolver(tpu=...)`; the step is compiled
                with XLA (tested here with `jit_compile=True`, TPUs cannot run here).

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


def worker_identity(strategy: tf.distribute.Strategy) -> WorkerIdentity:
    """This process's place in `strategy`'s cluster (TF_CONFIG's, for `multi_worker`): the
    `chief` task if the cluster has one, else worker 0, is the chief and number 0; the
    workers follow in TF_CONFIG's order. Without a cluster: the only worker, the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
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
    kind: str = "default", num_cpu_devices: int = 2, tpu_address: Optional[str] = None
) -> tf.distribute.Strategy:
    """The strategy named `kind` (see the module docstring)."""
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
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            where = f" at {tpu_address!r}" if tpu_address else ""
            cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise NoTPUError(
                f"make_strategy.kind = 'tpu' found no TPU{where} ({cause}). On a Cloud TPU VM "
                "leave make_strategy.tpu_address unset; elsewhere set it to the TPU's name or "
                "grpc://HOST:8470.") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {kind!r}; expected one of {STRATEGIES}.")
