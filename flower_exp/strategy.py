"""Which accelerator trains a run: TPU → several GPUs → one GPU/CPU, plus mixed precision.

The competition notebooks open with the same dozen lines (find a TPU, else fall back to the
default strategy, multiply the batch size by the replica count); this module is those lines,
made testable: the multi-replica path runs on a CPU split into logical devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._imports import tensorflow
from .errors import FlowerExpError

STRATEGIES = ("auto", "tpu", "mirrored", "gpu", "cpu")
PRECISIONS = ("auto", "off", "float16", "bfloat16")


@dataclass(frozen=True)
class Accelerator:
    """A ``tf.distribute`` strategy and what it means for a run."""

    strategy: Any
    kind: str  # "tpu", "gpu", "cpu"
    replicas: int
    precision: str  # "off", "float16" or "bfloat16"
    description: str

    def global_batch(self, per_replica: int) -> int:
        """Global batch size for ``per_replica`` examples on each replica."""
        return per_replica * self.replicas

    @property
    def drop_remainder(self) -> bool:
        """TPUs need static shapes, so every batch must be full."""
        return self.kind == "tpu"


def split_cpu(replicas: int) -> None:
    """Expose the CPU as ``replicas`` logical devices (test the multi-replica path on a CPU).

    Must run before TensorFlow initialises its devices, i.e. first thing in the process.
    """
    tf = tensorflow()
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as exc:
        if len(tf.config.list_logical_devices("CPU")) != replicas:
            raise FlowerExpError(
                f"cannot split the CPU into {replicas} devices after TensorFlow started ({exc}); "
                "pass --cpu-replicas before anything else runs"
            ) from None


def detect(requested: str = "auto", precision: str = "auto") -> Accelerator:
    """Pick the strategy: ``auto`` tries TPU, then several GPUs (MirroredStrategy), then the
    default one-device strategy. ``mirrored`` mirrors over all GPUs, or over all logical CPUs
    when there is no GPU (see :func:`split_cpu`).
    """
    if requested not in STRATEGIES:
        raise FlowerExpError(f"strategy {requested!r}: unknown; allowed: {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise FlowerExpError(f"mixed precision {precision!r}: unknown; allowed: {', '.join(PRECISIONS)}")
    tf = tensorflow()
    if requested in ("auto", "tpu"):
        tpu = _connect_tpu()
        if tpu is not None:
            return _with_precision(tpu, precision)
        if requested == "tpu":
            raise FlowerExpError("strategy 'tpu': no TPU found (TPUClusterResolver failed); use --strategy auto")
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "gpu" and not gpus:
        raise FlowerExpError("strategy 'gpu': no GPU visible to TensorFlow; use --strategy auto or cpu")
    if requested == "mirrored" or (requested == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        kind = "gpu" if gpus else "cpu"
        acc = Accelerator(
            strategy, kind, strategy.num_replicas_in_sync, "off", f"MirroredStrategy over {len(devices)} {kind.upper()}s"
        )
        return _with_precision(acc, precision)
    if requested in ("auto", "gpu") and gpus:
        acc = Accelerator(tf.distribute.OneDeviceStrategy(gpus[0].name), "gpu", 1, "off", f"one GPU ({gpus[0].name})")
        return _with_precision(acc, precision)
    return _with_precision(Accelerator(tf.distribute.get_strategy(), "cpu", 1, "off", "CPU (default strategy)"), precision)


def _connect_tpu() -> Accelerator | None:
    tf = tensorflow()
    for args in ((), ("local",)):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(*args)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError, KeyError):
            continue
        return Accelerator(strategy, "tpu", strategy.num_replicas_in_sync, "off", f"TPU ({strategy.num_replicas_in_sync} cores)")
    return None


def _with_precision(acc: Accelerator, precision: str) -> Accelerator:
    if precision == "auto":
        precision = {"tpu": "bfloat16", "gpu": "float16"}.get(acc.kind, "off")
    return Accelerator(acc.strategy, acc.kind, acc.replicas, precision, acc.description)


@contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Set Keras' global dtype policy for one run and restore the previous one afterwards,
    so runs sharing a process (a sweep worker) do not inherit each other's policy."""
    import keras

    previous = keras.mixed_precision.global_policy()
    name = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[precision]
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
