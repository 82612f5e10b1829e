"""Read runs back from MLflow for tables (``flower-exp runs``).

Only runs that are scored on validation are listed (kinds ``train`` and ``trial``): a sweep's
parent run, ensemble runs, refits and exports have no per-run validation score to rank by.
After the score come the searched parameters (docs/architecture.md, "Run tables").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .config import check_study_name
from .errors import FlowerExpError
from .tracking import TAG_KIND, TAG_STATE, TAG_STUDY, TAG_SUGGESTED, TrackingTarget, Tracker

# Shown instead of searched parameters when no run listed was a sweep trial (column: param).
_PLAIN_COLUMNS = {
    "architecture": "architecture",
    "size": "image_size",
    "lr_max": "lr_max",
    "lr_min": "lr_min",
    "rampup": "lr_rampup_epochs",
    "sustain": "lr_sustain_epochs",
    "decay": "lr_decay",
}
_NOT_LISTED = ("sweep", "ensemble", "refit", "export")
FIXED_COLUMNS = ("run", "name", "state", "best val_macro_f1", "best epoch")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class RunTable:
    """A runs table: ``columns`` (:data:`FIXED_COLUMNS`, then parameters), ``rows`` of display
    strings, and for ``--study`` the study's sweep parent run (None if it has none)."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    parent_run_id: str | None = None


def list_runs(target: TrackingTarget, experiment: str, top: int = 20, study: str | None = None) -> RunTable:
    """The ``top`` train and trial runs of ``experiment`` (only ``study``'s trials, if given) by
    best validation macro-F1, then start time (newest first).

    Parameter columns: the study's search space (its parent run's ``search_space`` param, in
    file order) with ``study``; else the searched parameters of the trials listed, in the order
    first seen; else, when none is a trial, a fixed set (architecture, size, LR schedule).
    A trial shows its suggested value (blank where a conditional parameter was not sampled),
    a train run its setting. Non-integer numbers are rounded to 3 significant digits."""
    tracker = Tracker(target, experiment)
    query = " and ".join(f"tags.`{TAG_KIND}` != '{kind}'" for kind in _NOT_LISTED)
    parent = None
    space: list[str] = []
    if study is not None:
        check_study_name(study)
        query += f" and tags.`{TAG_STUDY}` = '{study}'"
        parent = _latest_parent(tracker, study)
        space = _search_space(parent)
    runs = tracker.search_runs(
        query, order_by=["metrics.best_val_macro_f1 DESC", "attributes.start_time DESC"], max_results=max(1, top)
    )
    if study is not None and parent is None and not runs:
        raise FlowerExpError(
            f"--study {study}: no runs of that study in experiment {experiment!r}; "
            f"studies there: {', '.join(_studies(tracker)) or '(none)'}"
        )
    suggested = [_suggested(r.data.tags) for r in runs]
    for values in suggested:
        space += [name for name in values or {} if name not in space]
    columns = {name: name for name in space} if space else _PLAIN_COLUMNS
    table = RunTable([*FIXED_COLUMNS, *columns], parent_run_id=parent.info.run_id if parent else None)
    for run, values in zip(runs, suggested):
        params, metrics = run.data.params, run.data.metrics
        row = [
            run.info.run_id[:8],
            run.info.run_name or "",
            run.data.tags.get(TAG_STATE, run.info.status.lower()),
            "" if metrics.get("best_val_macro_f1") is None else f"{metrics['best_val_macro_f1']:.4f}",
            "" if metrics.get("best_epoch") is None else f"{metrics['best_epoch']:.0f}",
        ]
        source: dict[str, Any] = params if values is None else values
        row += [rounded(source.get(key, "")) for key in columns.values()]
        table.rows.append(row)
    return table


def rounded(value: Any) -> str:
    """``value`` for a table: non-integer numbers (also as MLflow's strings) to 3 significant
    digits; integers, booleans and text as they are."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        if _INTEGER.fullmatch(value.strip()):
            return value
        try:
            value = float(value)
        except ValueError:
            return value
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _latest_parent(tracker: Tracker, study: str) -> Any:
    """The study's sweep parent run; the newest when ``sweep --new --force`` replaced one."""
    found = tracker.search_runs(
        f"tags.`{TAG_KIND}` = 'sweep' and tags.`{TAG_STUDY}` = '{study}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    return found[0] if found else None


def _search_space(parent: Any) -> list[str]:
    """The searched parameter names of a sweep parent run, in sweep-file order."""
    if parent is None:
        return []
    try:
        space = json.loads(parent.data.params.get("search_space", "{}"))
    except json.JSONDecodeError:  # cut at MLflow's param length limit
        return []
    return list(space) if isinstance(space, dict) else []


def _suggested(tags: dict[str, str]) -> dict[str, Any] | None:
    """A trial's suggested values (None for a run that is not a trial)."""
    try:
        values = json.loads(tags[TAG_SUGGESTED])
    except (KeyError, json.JSONDecodeError):
        return None
    return values if isinstance(values, dict) else None


def _studies(tracker: Tracker) -> list[str]:
    """Names of the studies with a sweep parent run in the tracker's experiment."""
    parents = tracker.search_runs(f"tags.`{TAG_KIND}` = 'sweep'", max_results=1000)
    return sorted({r.data.tags[TAG_STUDY] for r in parents if TAG_STUDY in r.data.tags})
