"""``flower-exp dashboard``: optuna-dashboard on a project's Optuna storage, the live view of a
running sweep (trials appear as they finish; MLflow's copy of the Optuna plots is written by
the sweep itself)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .._imports import require
from ..config import HeartbeatConfig, find_config
from ..errors import FlowerExpError
from .storage import default_storage_url, open_storage


@dataclass(frozen=True)
class DashboardStudy:
    """A study the dashboard shows, and the page to open for it."""

    name: str
    trials: int
    url: str


def dashboard_studies(storage_url: str, base: str) -> list[DashboardStudy]:
    """The studies in ``storage_url`` (opened read-only: a torn journal is not repaired here)
    with their dashboard pages under ``base``."""
    import optuna

    store = open_storage(storage_url, HeartbeatConfig(), readonly=True)
    return [
        DashboardStudy(s.study_name, s.n_trials, f"{base}/dashboard/studies/{s._study_id}")
        for s in optuna.get_all_study_summaries(store)
    ]


def resolve_storage(storage: str | None, config: str | os.PathLike | None) -> str:
    """``--storage``, else the project's journal file (which must exist: a dashboard of nothing
    is a mistyped project folder)."""
    if storage is not None:
        return storage
    url = default_storage_url(find_config(config))
    if not Path(url).exists():
        raise FlowerExpError(f"no sweeps yet ({url} does not exist); start one with: flower-exp sweep")
    return url


def serve_dashboard(storage_url: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on ``storage_url`` at ``host:port`` until interrupted."""
    require("optuna_dashboard")
    from optuna_dashboard import run_server

    store = open_storage(storage_url, HeartbeatConfig(), readonly=True)
    try:
        run_server(store, host=host, port=port)
    except OSError as exc:  # port in use, address not on this machine
        raise FlowerExpError(f"dashboard on {host}:{port}: cannot listen ({exc.strerror or exc}); pick another --port") from None
