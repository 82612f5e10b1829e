"""``flower-exp status``: a study's trials by state and its best trials, read from the Optuna
storage alone (no TensorFlow, no MLflow)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import HeartbeatConfig, check_study_name, find_config, load_experiment
from ..errors import FlowerExpError
from ..tracking import redact
from .names import ATTR_PARENT
from .scoring import TrialSummary, _count, top_trials
from .storage import _default_study_name, default_storage_url, find_sweep_file, open_storage


@dataclass(frozen=True)
class StudyStatus:
    """What ``flower-exp status`` shows of a study."""

    study: str
    storage: str  # redacted
    counts: dict[str, int]  # trials by state (complete, pruned, failed, running, waiting, finished)
    top: list[TrialSummary]  # best first
    parent_run_id: str | None  # the sweep's MLflow parent run

    @property
    def best(self) -> TrialSummary | None:
        """The best trial, if any is scored."""
        return self.top[0] if self.top else None


def study_status(
    *,
    experiment: str | None = None,
    sweep: str | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    config: str | os.PathLike | None = None,
    top: int = 5,
) -> StudyStatus:
    """Trials by state, the ``top`` best trials (:func:`top_trials`), the parent MLflow run (no
    TensorFlow)."""
    import optuna

    if top < 1:
        raise FlowerExpError(f"--top {top}: must be >= 1")
    if study_name is not None:
        check_study_name(study_name)
    config_path = find_config(config)
    storage_url = storage or default_storage_url(config_path)
    if storage is None and not Path(storage_url).exists():
        raise FlowerExpError(f"no sweeps yet ({storage_url} does not exist); start one with: flower-exp sweep")
    store = open_storage(storage_url, HeartbeatConfig(), readonly=True)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    if study_name is None:
        exp = load_experiment(experiment, config_path)
        sweep_path = find_sweep_file(sweep, config_path)
        study_name = _default_study_name(exp.name, sweep_path)
    if study_name not in summaries:
        allowed = ", ".join(summaries) or "(none)"
        raise FlowerExpError(f"study {study_name!r}: not found in {redact(storage_url)}; studies there: {allowed}")
    study = optuna.load_study(study_name=study_name, storage=store)
    counts = _count(study)
    counts.pop("failed_counted")
    return StudyStatus(
        study=study_name,
        storage=redact(storage_url),
        counts=counts,
        top=top_trials(study, top),
        parent_run_id=study.user_attrs.get(ATTR_PARENT),
    )
