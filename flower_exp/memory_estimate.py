"""Will a configuration fit in memory? A cheap estimate before training, and a clean failure after.

The estimate is a deliberate *lower bound* of what training needs per replica: the activations
every layer outputs for one batch (kept for the backward pass), plus weights, gradients and
Adam's two moments. Activations are measured on the real network built at a small probe size
and scaled by pixel count (convolutional activations grow with image area). Real use is
higher (workspace, fragmentation, prefetched batches), so a configuration is refused only when
even this lower bound is more than :data:`REFUSE_FACTOR` times the memory available, and a
warning is printed when it exceeds the memory available. ``memory_check: false`` skips it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MemoryTooLarge, OutOfMemory

REFUSE_FACTOR = 2.0
PROBE_SIZE = 64  # builds any registered network in seconds; smaller images are measured at their own size
ADAM_COPIES = 4  # weights, gradients, two moments


@dataclass(frozen=True)
class Estimate:
    """Bytes one replica needs at least to train a configuration, and what the device has."""

    needed: int
    available: int | None  # None: unknown (TPU, or no way to ask the device)
    device: str  # "host RAM" or "GPU memory"

    @property
    def ratio(self) -> float | None:
        """``needed / available`` (None when the available memory is unknown)."""
        return None if not self.available else self.needed / self.available


def check_memory(cfg: Any, num_classes: int, warn: Callable[[str], None]) -> Estimate | None:
    """Refuse (:class:`MemoryTooLarge`) a configuration clearly beyond the device's memory,
    warn when it is probably beyond; returns the estimate (None when ``memory_check`` is off)."""
    if not getattr(cfg, "memory_check", True):
        return None
    estimate = estimate_training_memory(cfg, num_classes)
    ratio = estimate.ratio
    if ratio is None:
        return estimate
    what = (
        f"{cfg.architecture} at image_size {cfg.image_size} with batch_size_per_replica {cfg.batch_size_per_replica} "
        f"needs at least {_human(estimate.needed)} per replica to train, but the {estimate.device} available is "
        f"{_human(estimate.available)}"
    )
    if ratio > REFUSE_FACTOR:
        raise MemoryTooLarge(f"{what}; lower image_size or batch_size_per_replica (or set memory_check=false to try anyway)")
    if ratio > 1.0:
        warn(f"warning: {what}; training will probably run out of memory")
    return estimate


def estimate_training_memory(cfg: Any, num_classes: int) -> Estimate:
    """The lower-bound training memory of ``cfg`` per replica and the memory of the device."""
    device, available = available_memory()
    bytes_per_value = 2 if _half_precision(cfg.mixed_precision, device) else 4
    probe = min(PROBE_SIZE, cfg.image_size)
    activations, params = _per_pixel_activations_and_params(cfg.architecture, probe, cfg.cnn_width, cfg.cnn_depth, num_classes)
    needed = int(
        activations * cfg.image_size**2 * cfg.batch_size_per_replica * bytes_per_value
        + params * 4 * ADAM_COPIES  # variables stay float32 under mixed precision
    )
    return Estimate(needed, available, device)


def available_memory() -> tuple[str, int | None]:
    """("GPU memory", total bytes of the first GPU) when TensorFlow sees a GPU, else
    ("host RAM", bytes available now, within the cgroup limit if there is one)."""
    from ._imports import tensorflow

    tf = tensorflow()
    if tf.config.list_physical_devices("GPU"):
        return "GPU memory", _gpu_total_bytes()
    if tf.config.list_logical_devices("TPU"):
        return "TPU memory", None
    return "host RAM", host_available_bytes()


def host_available_bytes(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """``MemAvailable`` from ``meminfo``, capped by a cgroup v2 (or v1) memory limit."""
    found: int | None = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(cgroup, limit_file).read_text().strip()
            usage = int(Path(cgroup, usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 reports "no limit" as a huge number
            room = max(0, int(limit) - usage)
            found = room if found is None else min(found, room)
        break
    return found


def out_of_memory(cfg: Any, exc: BaseException) -> OutOfMemory:
    """The one-line error for a real out-of-memory during training."""
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(
        f"out of memory training {cfg.architecture} at image_size {cfg.image_size} with batch_size_per_replica "
        f"{cfg.batch_size_per_replica} ({type(exc).__name__}: {first}); lower image_size or batch_size_per_replica"
    )


# --------------------------------------------------------------------------- helpers


def _half_precision(mixed_precision: str, device: str) -> bool:
    # "auto" means float16 on GPU, bfloat16 on TPU, float32 on CPU (see strategy.py).
    if mixed_precision == "auto":
        return device != "host RAM"
    return mixed_precision in ("float16", "bfloat16")


@functools.lru_cache(maxsize=32)
def _per_pixel_activations_and_params(
    architecture: str, probe: int, cnn_width: int, cnn_depth: int, num_classes: int
) -> tuple[float, int]:
    """(activation values per input pixel for one image, parameter count), measured on the
    network built at ``probe`` px without pretrained weights."""
    from .models import create_model

    model = create_model(
        architecture, num_classes=num_classes, image_size=probe, weights="none", cnn_width=cnn_width, cnn_depth=cnn_depth
    )
    values = _activation_values(model)
    params = int(model.count_params())
    del model
    return values / probe**2, params


def _activation_values(model: Any) -> int:
    """Output values of every layer for one example, nested models included."""
    total = 0
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        if inner:
            total += _activation_values(layer)
            continue
        try:
            outputs = layer.output
        except (AttributeError, ValueError):
            continue  # a layer without a single symbolic output
        for tensor in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            size = 1
            for dim in tuple(tensor.shape)[1:]:
                size *= int(dim or 1)
            total += size
    return total


def _gpu_total_bytes() -> int | None:
    # TensorFlow reports only what it has allocated; nvidia-smi knows the card's size.
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible:
        cmd.append(f"--id={visible}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
