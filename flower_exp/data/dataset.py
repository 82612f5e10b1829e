"""An experiment's data, ready to use: generated on first use, class names loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import ResolvedExperiment
from ..errors import DataError
from . import records


@dataclass(frozen=True)
class ExperimentData:
    """Where an experiment's shards live and what their labels mean."""

    root: str
    class_names: list[str]
    extra: list[tuple[str, tuple[str, ...]]]  # (root, splits) of each extra_data source
    generated: bool  # created by this call (demo data on first use)


def open_data(exp: ResolvedExperiment, log: Callable[[str], None] = lambda _msg: None) -> ExperimentData:
    """Make sure the experiment's data exists (generating demo data if the recipe says so)
    and return its root and class names.

    Class names come from the experiment (``classes`` / ``classes_file``), else from
    ``<data_dir>/classes.txt``, which ``data demo`` and ``data import-folder`` write.
    """
    generated = False
    spec = exp.config.generate
    if spec is not None:
        from .demo import ensure_demo

        _, generated = ensure_demo(
            exp.data_dir,
            classes=spec.classes,
            per_class=spec.per_class,
            sizes=spec.sizes,
            seed=spec.seed,
            shards=spec.shards,
        )
        if generated:
            log(f"generated demo dataset at {exp.data_dir}")
    names = exp.class_names
    if names is None:
        path = records.join(exp.data_dir, records.CLASSES_FILE)
        if not records.exists(path):
            raise DataError(
                f"{path}: not found; experiment {exp.name!r} needs class names: set classes or classes_file in {exp.config_path}"
            )
        names = records.read_classes_file(path)
    extra = [(src.path, tuple(src.splits)) for src in exp.extra_data]
    return ExperimentData(root=exp.data_dir, class_names=names, extra=extra, generated=generated)
