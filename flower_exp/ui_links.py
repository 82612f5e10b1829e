"""The MLflow UI pages `flower-exp ui` prints before it starts the server.

MLflow 3's UI routes inside the URL fragment (``#/experiments/1/runs``). Its runs table opens
in the mode the ``workflowType`` query names; without it an experiment of a fresh browser
profile may open as GenAI (traces), where a sweep's runs are one switch away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from .tracking import SweepOverview

# The most trials a compare link names: MLflow's compare view is unreadable beyond that and
# browsers cap URL length.
MAX_COMPARED = 20


@dataclass(frozen=True)
class Link:
    """One page of the UI and what it shows."""

    label: str
    url: str


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine uses for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def runs_table(base: str, experiment_id: str) -> str:
    """The experiment's runs table in model-training mode."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_page(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page (params, metrics, artifacts)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_page(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's side-by-side comparison of ``run_ids`` (parallel coordinates, scatter, params)."""
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def links(overviews: list[SweepOverview], base: str, experiment: str | None = None) -> list[Link]:
    """For each experiment (only ``experiment`` when given): its runs table and, where it has
    a sweep, the latest sweep's parent run and the comparison of its best trials."""
    out = []
    for o in overviews:
        if experiment is not None and o.experiment != experiment:
            continue
        out.append(Link(f"{o.experiment}: runs", runs_table(base, o.experiment_id)))
        if o.parent_run_id is None:
            continue
        out.append(Link(f"{o.experiment}: sweep {o.study}", run_page(base, o.experiment_id, o.parent_run_id)))
        if len(o.trial_run_ids) >= 2:
            shown = o.trial_run_ids[:MAX_COMPARED]
            what = f"its {len(shown)} best trials" if len(o.trial_run_ids) > MAX_COMPARED else f"its {len(shown)} trials"
            out.append(Link(f"{o.experiment}: compare {what}", compare_page(base, o.experiment_id, shown)))
    return out
