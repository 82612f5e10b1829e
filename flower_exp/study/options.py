"""The sweep's data: what it is asked to do (:class:`SweepOptions`), what every worker is given
(:class:`SweepSpec`) and what it reports at the end (:class:`SweepResult`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..budget import Deadline
from ..tracking import TrackingTarget
from .scoring import TrialSummary


@dataclass(frozen=True)
class SweepOptions:
    """The arguments of one sweep, those of ``flower-exp sweep`` and ``flower_exp.sweep``. None
    stands for the sweep file's or the project's default."""

    experiment: str | None = None
    """Experiment name in ``experiments.yaml`` (None: the sweep file's ``experiment``)."""
    sweep: str | None = None
    """Sweep file: a name (``<project>/sweeps/NAME.yaml``, else the packaged one) or a path (None: ``demo``)."""
    trials: int | None = None
    """The study's total of finished trials, not this run's: a resumed sweep counts those already done
    (None: the sweep file's ``trials``)."""
    timeout_min: float | None = None
    """No trial starts after this many minutes (None: the sweep file's ``timeout_min``, if any)."""
    budget_min: float | None = None
    """Wall-clock budget in minutes: the sweep is over by then, its running trial stopped at an epoch
    boundary and kept as PRUNED with ``stopped_by: budget``, its best epoch saved."""
    workers: int = 1
    """Local worker processes sharing the study; 1 runs the trials in this process."""
    study_name: str | None = None
    """Optuna study name (None: ``<experiment>-<sweep file stem>``)."""
    storage: str | None = None
    """Optuna storage: a journal file path or an RDB URL (None: ``<project>/mlruns/optuna/journal.log``)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (None: ``$MLFLOW_TRACKING_URI``, else the project's sqlite store)."""
    new: bool = False
    """Start a new study: an existing one of that name is refused, unless ``force``."""
    force: bool = False
    """With ``new``: delete an existing study of that name and start over."""
    seed: int | None = None
    """Sampler seed (None: the sweep file's)."""
    overrides: Sequence[str] = ()
    """``--set KEY=VALUE`` strings: validated like ``train --set``, applied to the experiment and held
    fixed in every trial over the sweep file's ``fixed`` (a searched key is refused)."""
    config: str | os.PathLike | None = None
    """``experiments.yaml`` path (None: ``./experiments.yaml``, else the packaged copy)."""
    quiet: bool = False
    """One line per trial instead of one per epoch."""


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker process needs to join a sweep (picklable)."""

    config_path: str | None
    experiment: str
    sweep_path: str
    study_name: str
    storage_url: str
    tracking: TrackingTarget
    parent_run_id: str
    total_trials: int
    deadline: float | None  # time.time() after which no trial starts
    worker: int = 0
    quiet: bool = False
    budget: Deadline | None = None  # the sweep is over by then, the running trial included
    seed: int | None = None  # the sampler seed given to the sweep (None: the sweep file's)
    overrides: tuple[str, ...] = ()  # the sweep's --set KEY=VALUE, applied in every worker


@dataclass
class SweepResult:
    """What a sweep command reports at the end."""

    study_name: str
    storage_url: str
    parent_run_id: str
    experiment: str
    counts: dict[str, int]
    best: list[TrialSummary] = field(default_factory=list)  # the top trials, best first
