"""A tiny flower-exp project on disk, for tests and for ``scripts/soak.py`` (which imports this
file by path): a small CNN at 32 px, so a trial trains in seconds on a CPU. No pytest here."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "image_size": 32,
    "batch_size_per_replica": 16,
    "shuffle_buffer": 64,
    "architecture": "cnn",
    "cnn_width": 8,
    "cnn_depth": 2,
    "lr_rampup_epochs": 0,
    "lr_sustain_epochs": 1,
}


def write_project(folder: Path, data_dir: str, name: str, sweep: dict | None = None, **settings) -> Path:
    """``folder/experiments.yaml`` with one experiment ``name`` (the default): ``TINY`` on
    ``data_dir``, updated with ``settings``; with ``sweep``, also ``folder/sweeps/<name>.yaml``,
    so the study is ``<name>-<name>``. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"default": name, "experiments": {name: {"data_dir": data_dir, **TINY, **settings}}}
    (folder / "experiments.yaml").write_text(yaml.safe_dump(config))
    if sweep is not None:
        (folder / "sweeps").mkdir(exist_ok=True)
        (folder / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return folder
