"""Read runs back from MLflow for tables (``flower-exp runs``)."""

from __future__ import annotations

from typing import Any

from .tracking import TAG_STATE, TrackingTarget, Tracker

_COLUMNS = {
    "architecture": "params.architecture",
    "size": "params.image_size",
    "lr_max": "params.lr_max",
    "lr_min": "params.lr_min",
    "rampup": "params.lr_rampup_epochs",
    "sustain": "params.lr_sustain_epochs",
    "decay": "params.lr_decay",
}


def list_runs(target: TrackingTarget, experiment: str, top: int = 20) -> list[dict[str, Any]]:
    """The ``top`` runs of ``experiment`` by best validation macro-F1, as display rows."""
    tracker = Tracker(target, experiment)
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        order_by=["metrics.best_val_macro_f1 DESC", "attributes.start_time DESC"],
        max_results=max(1, top),
    )
    rows = []
    for r in runs:
        params, metrics, tags = r.data.params, r.data.metrics, r.data.tags
        row: dict[str, Any] = {"run": r.info.run_id[:8], "name": r.info.run_name or ""}
        row.update({col: params.get(key.split(".", 1)[1], "") for col, key in _COLUMNS.items()})
        row["best_f1"] = _fmt(metrics.get("best_val_macro_f1"), "{:.4f}")
        row["best_epoch"] = _fmt(metrics.get("best_epoch"), "{:.0f}")
        row["epoch_s"] = _fmt(metrics.get("mean_epoch_time_s"), "{:.1f}")
        row["state"] = tags.get(TAG_STATE, r.info.status.lower())
        rows.append(row)
    return rows


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else pattern.format(value)
