"""The seed's learning-rate schedule as a pure function of the epoch.

Ramp up linearly from ``lr_start`` (default ``lr_min``) to ``lr_max`` over
``rampup_epochs``, hold ``lr_max`` for ``sustain_epochs``, then decay exponentially towards
``lr_min``::

    lr(e) = (lr_max - lr_min) * decay ** (e - rampup - sustain) + lr_min

``lr_max`` is multiplied by the number of replicas, as the TPU notebooks do (a global batch
``replicas`` times larger tolerates a proportionally larger step), unless
``scale_by_replicas`` is off. The seed's hand-written variant drew ``random() * lr_min`` in
the ramp-up epochs; ``random_rampup`` reproduces it, seeded so runs are repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LRSchedule:
    """Constants of the schedule (epochs are 0-based, as Keras passes them)."""

    lr_min: float = 1e-4
    lr_max: float = 8e-4
    lr_start: float | None = None
    rampup_epochs: int = 4
    sustain_epochs: int = 6
    decay: float = 0.8
    scale_by_replicas: bool = True
    random_rampup: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.lr_min > 0 and self.lr_max > 0):
            raise ValueError("lr_min and lr_max must be positive")
        if self.lr_start is not None and self.lr_start <= 0:
            raise ValueError("lr_start must be positive")
        if self.rampup_epochs < 0 or self.sustain_epochs < 0:
            raise ValueError("rampup_epochs and sustain_epochs must be >= 0")
        if not 0 < self.decay <= 1:
            raise ValueError("decay must be in (0, 1]")

    def peak(self, replicas: int = 1) -> float:
        """``lr_max`` after replica scaling."""
        return self.lr_max * (replicas if self.scale_by_replicas else 1)

    def lr(self, epoch: int, replicas: int = 1) -> float:
        """Learning rate of 0-based ``epoch`` with ``replicas`` accelerator replicas."""
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        peak = self.peak(replicas)
        start = self.lr_min if self.lr_start is None else self.lr_start
        if epoch < self.rampup_epochs:
            if self.random_rampup:
                # Keyed by (seed, epoch) so the value does not depend on call order.
                return float(self.lr_min * np.random.default_rng([self.seed, epoch]).random())
            return (peak - start) / self.rampup_epochs * epoch + start
        if epoch < self.rampup_epochs + self.sustain_epochs:
            return peak
        return (peak - self.lr_min) * self.decay ** (epoch - self.rampup_epochs - self.sustain_epochs) + self.lr_min

    def values(self, epochs: int, replicas: int = 1) -> list[float]:
        """Learning rates of epochs ``0 .. epochs-1``."""
        return [self.lr(e, replicas) for e in range(epochs)]


def plot_schedule(schedule: LRSchedule, epochs: int, path: str, replicas: int = 1) -> None:
    """Write a PNG of the schedule over ``epochs`` epochs to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = schedule.values(epochs, replicas)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, epochs + 1), values, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(
        f"ramp-up {schedule.rampup_epochs}, sustain {schedule.sustain_epochs}, decay {schedule.decay:g}"
        + (f", x{replicas} replicas" if replicas > 1 and schedule.scale_by_replicas else "")
    )
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
