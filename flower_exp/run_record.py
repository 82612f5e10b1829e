"""What a run records in MLflow beside its per-epoch metrics: its params, its data as a dataset
input, and its artifacts (``model/model.keras``, ``history.csv``, ``lr_schedule.png``,
``config.yaml`` and, for a run scored on validation, ``val_probs.npz`` and
``confusion_matrix.png``), which ``best`` reads back (docs/architecture.md, "MLflow conventions").
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .callbacks import EPOCH_METRICS
from .config import ExperimentConfig, ResolvedExperiment
from .ensemble import confusion_png
from .errors import RecordingFailed
from .schedule import LRSchedule, plot_schedule
from .tracking import DatasetRecord, Tracker, git_commit, package_versions

# Settings that are not hyperparameters of the run (logged elsewhere or meaningless as params).
_NOT_PARAMS = {
    "name",
    "description",
    "classes",
    "classes_file",
    "generate",
    "extra_data",
    "data_dir",
    "cache_dir",
    "memory_check",
    "weights_dir",
}


def run_params(
    exp: ResolvedExperiment, data, train_files, acc, global_batch: int, steps: int, prep, **extra: Any
) -> dict[str, Any]:
    """A run's MLflow params: its hyperparameters, then how it ran (``data``'s
    ``train_files``, accelerator ``acc``, batch, steps per epoch, ``prep``: a
    :class:`flower_exp.train.Preprocessing`), its data's fingerprint and the versions;
    ``extra`` goes after the image counts."""
    from .data.leakage import data_fingerprint

    cfg = exp.config
    return {
        **_hyperparameters(cfg),
        "num_classes": len(data.class_names),
        "train_split": train_files.split,
        "train_images": train_files.count,
        **extra,
        "stored_image_size": train_files.stored_size,
        "normalization": prep.normalization,
        "preprocessing_on": "device" if prep.on_device else "host",
        "accelerator": acc.kind,
        "replicas": acc.replicas,
        "global_batch_size": global_batch,
        "precision": acc.precision,
        "steps_per_epoch": steps,
        "weights_file": _weights_file(exp),
        "data_dir": data.root,
        "data_fingerprint": data_fingerprint(data.root, cfg.image_size, [root for root, _ in data.extra]),
        "git_commit": git_commit(Path(exp.config_path).parent) or "none",
        **{f"version.{k}": v for k, v in package_versions().items()},
    }


def dataset_record(data, cfg: ExperimentConfig, fingerprint: str, context: str, **counts: int) -> DatasetRecord:
    """The run's data as an MLflow dataset input: the split folder's name, the fingerprint the
    params carry, and the image counts of the splits read (extra sources included)."""
    name = Path(data.root.rstrip("/")).name or cfg.name
    profile = {**counts, "classes": len(data.class_names), "image_size": cfg.image_size, "extra_sources": len(data.extra)}
    return DatasetRecord(name=name, digest=fingerprint, source=data.root, profile=profile, context=context)


def _hyperparameters(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg``'s settings as flat params (nested ones dotted), the non-hyperparameters left out."""
    flat: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        if key in _NOT_PARAMS:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _weights_file(exp: ResolvedExperiment) -> str:
    """The ``weights_file`` param: the local file the network starts from, ``download`` when
    Keras downloads it, ``none`` without pretrained weights."""
    from .models import resolve_weights

    weights = resolve_weights(exp.config.architecture, exp.config.weights, exp.weights_dir)
    return weights if weights == "none" or os.path.isfile(weights) else "download"


@dataclass(frozen=True)
class RunArtifacts:
    """What a run saves. ``val_*`` (image ids, labels and the best epoch's probabilities, in
    validation order) are None for a refit, which has no validation split left to score."""

    network: Any  # the Keras model to save (never the device-preprocessing training wrapper)
    exp: ResolvedExperiment
    schedule: LRSchedule
    replicas: int
    history: list[dict[str, float]]
    class_names: list[str]
    val_ids: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_probs: np.ndarray | None = None


def save_artifacts(tracker: Tracker, run_id: str, artifacts: RunArtifacts) -> None:
    """Write ``artifacts`` to a temporary folder and upload them to ``run_id``. A full or
    unwritable disk is not the configuration's fault: :class:`RecordingFailed`, naming the path."""
    try:
        with tempfile.TemporaryDirectory(prefix="flower-exp-run-") as tmp:
            write_artifacts(Path(tmp), artifacts)
            tracker.log_artifact(run_id, tmp)
    except OSError as exc:
        where = exc.filename or tempfile.gettempdir()
        raise RecordingFailed(f"cannot write the run's artifacts to {where} ({exc.strerror or exc})") from None


def write_artifacts(folder: Path, artifacts: RunArtifacts) -> None:
    """Write ``artifacts``' files into the empty ``folder``."""
    a = artifacts
    (folder / "model").mkdir()
    a.network.save(folder / "model" / "model.keras")
    _write_history(folder / "history.csv", a.history)
    plot_schedule(a.schedule, a.exp.config.epochs, str(folder / "lr_schedule.png"), a.replicas)
    _write_config(folder / "config.yaml", a.exp, a.class_names)
    if a.val_probs is not None:
        np.savez_compressed(folder / "val_probs.npz", ids=a.val_ids, labels=a.val_labels, probs=a.val_probs)
        confusion_png(
            a.val_probs,
            a.val_labels,
            a.class_names,
            str(folder / "confusion_matrix.png"),
            "validation confusion matrix (best epoch)",
        )


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *EPOCH_METRICS], restval="")
        writer.writeheader()
        writer.writerows(history)


def _write_config(path: Path, exp: ResolvedExperiment, class_names: list[str]) -> None:
    # The resolved configuration with its data folder and class names: what refit and export read.
    resolved = exp.config.model_dump(mode="json")
    resolved.update(data_dir=exp.data_dir, classes=class_names)
    path.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
