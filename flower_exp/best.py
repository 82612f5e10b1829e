"""``flower-exp best``: pick the best runs, search ensemble weights honestly, log, refit, export.

Reads only what tracking stored (params, summary metrics, ``val_probs.npz``, ``model/``,
``config.yaml``); the weight search and its held-out protocol live in :mod:`flower_exp.ensemble`,
the export format in :mod:`flower_exp.export`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, check_study_name, find_config, load_experiment, project_dir, read_yaml, resolve
from .errors import FlowerExpError
from .tracking import TAG_KIND, TAG_PREFIX, TAG_STATE, Tracker, default_target

METHODS = ("optuna", "greedy", "mean")
# The characters MLflow allows in a metric name (mlflow.utils.validation).
METRIC_NAME = re.compile(r"[\w./: -]+")


@dataclass(frozen=True)
class BestOptions:
    """The arguments of ``flower-exp best`` and ``flower_exp.best``."""

    experiment: str | None = None
    """Experiment whose runs are ranked (None: the config's ``default``, else its first)."""
    study: str | None = None
    """Only this study's trials (None: every finished run of the experiment)."""
    top: int = 3
    """How many runs to consider."""
    metric: str = "val_macro_f1"
    """Ranking metric: each run's ``best_<metric>``."""
    diverse: bool = False
    """At most one run per architecture."""
    method: str = "optuna"
    """Weight search: ``optuna``, ``greedy`` (Caruana selection) or ``mean``."""
    trials: int = 100
    """Weight-search trials (``optuna``) or rounds (``greedy``)."""
    seed: int = 0
    """Seed of the validation split and the weight search."""
    export: str | None = None
    """Write a self-contained export to this folder (None: no export)."""
    refit: bool = False
    """Retrain each exported member on train+val for its best epoch count, and export the refits."""
    force: bool = False
    """Replace an existing export."""
    force_ensemble: bool = False
    """Export the blend even if it does not beat the best single member."""
    register: str | None = None
    """Also register the export in the MLflow model registry under this name."""
    tracking_uri: str | None = None
    """MLflow tracking URI (None: ``$MLFLOW_TRACKING_URI``, else the project's sqlite store)."""
    config: str | os.PathLike | None = None
    """``experiments.yaml`` path (None: ``./experiments.yaml``, else the packaged copy)."""


@dataclass
class Candidate:
    """A finished run that may join the ensemble."""

    run_id: str
    architecture: str
    image_size: int
    score: float
    best_epoch: int
    parent_run_id: str | None
    name: str


@dataclass
class BestResult:
    """What ``best`` did."""

    candidates: list[Candidate]
    report: Any  # ensemble.EnsembleReport
    exported_members: list[str]
    weights: list[float]
    ensemble_run_id: str
    export_dir: str | None = None
    refit_runs: dict[str, str] = field(default_factory=dict)  # original run -> refit run


def select_runs(
    tracker: Tracker, *, study: str | None, top: int, metric: str = "val_macro_f1", diverse: bool = False
) -> list[Candidate]:
    """The ``top`` finished or budget-stopped (not pruned/failed) runs by ``metric``, optionally
    one per architecture."""
    key = metric if metric.startswith("best_") else f"best_{metric}"
    query = "attributes.status = 'FINISHED'"
    if study:
        query += f" and tags.`{TAG_PREFIX}study` = '{check_study_name(study)}'"
    # Backquoted: MLflow metric names may hold spaces, dots and slashes (check_metric_name
    # keeps backquotes out).
    runs = tracker.search_runs(query, order_by=[f"metrics.`{key}` DESC"], max_results=500)
    # A run the budget stopped kept its best epoch like a finished one; pruned runs lost to
    # others. (MLflow's filter language has no IN for tags, hence the state test here.)
    runs = [
        r
        for r in runs
        if r.data.tags.get(TAG_KIND) in ("train", "trial")
        and key in r.data.metrics
        and r.data.tags.get(TAG_STATE) in ("finished", "stopped")
    ]
    if not runs:
        where = f"study {study!r}" if study else f"experiment {tracker.experiment!r}"
        raise FlowerExpError(f"no finished runs with metric {key} in {where}; run flower-exp sweep or train first")
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for run in runs:
        arch = run.data.params.get("architecture", "?")
        if diverse and arch in seen:
            continue
        seen.add(arch)
        chosen.append(
            Candidate(
                run_id=run.info.run_id,
                architecture=arch,
                image_size=int(run.data.params.get("image_size", 0)),
                score=float(run.data.metrics[key]),
                best_epoch=int(run.data.metrics.get("best_epoch", 0)),
                parent_run_id=run.data.tags.get("mlflow.parentRunId"),
                name=run.info.run_name or run.info.run_id[:8],
            )
        )
        if len(chosen) >= top:
            break
    return chosen


def run_best(options: BestOptions, *, log: Callable[[str], None] = print) -> BestResult:
    """Select the best runs, search ensemble weights on one half of validation and score on
    the other (both ways), log an ``ensemble`` run, optionally refit and export."""
    from .ensemble import confusion_png, evaluate, load_member

    if options.method not in METHODS:
        raise FlowerExpError(f"--method {options.method!r}: unknown; allowed: {', '.join(METHODS)}")
    if options.top < 1:
        raise FlowerExpError(f"--top {options.top}: must be >= 1")
    check_metric_name(options.metric)
    if options.study is not None:
        check_study_name(options.study)
    if options.export is not None and Path(options.export).exists() and not Path(options.export).is_dir():
        raise FlowerExpError(
            f"{options.export}: exists and is not a folder; remove it or choose another path"
        )  # even with --force
    if options.export is not None and Path(options.export).exists() and not options.force:
        # Checked up front: refusing after minutes of refitting would waste them.
        raise FlowerExpError(f"{options.export}: already exists; pass --force to replace it")
    if options.export is not None:
        _check_export_writable(Path(options.export))
    config_path = find_config(options.config)
    exp = load_experiment(options.experiment, config_path)
    target = default_target(project_dir(config_path), options.tracking_uri)
    tracker = Tracker(target, exp.name)
    candidates = select_runs(tracker, study=options.study, top=options.top, metric=options.metric, diverse=options.diverse)
    log("selected: " + ", ".join(f"{c.name} ({c.architecture}, {c.image_size}px, {c.score:.4f})" for c in candidates))

    with tempfile.TemporaryDirectory(prefix="flower-exp-best-") as tmp:
        members = []
        for c in candidates:
            path = tracker.download(c.run_id, "val_probs.npz", tmp)
            members.append(load_member(c.run_id, path))
        study_name = f"{options.study or exp.name}-ensemble"
        report = evaluate(members, method=options.method, trials=options.trials, seed=options.seed, study_name=study_name)
        log(
            f"held-out macro-F1 (mean of both halves): ensemble {report.holdout_ensemble:.4f} vs best single member "
            f"{report.holdout_best_single:.4f}, picked on the fit half like the weights ({'ensemble wins' if report.ensemble_wins else 'ensemble does not win'})"
        )
        use_ensemble = (report.ensemble_wins or options.force_ensemble) and len(candidates) > 1
        if use_ensemble:
            chosen = {name: w for name, w in zip(report.member_names, report.weights) if w > 0}
        else:
            if len(candidates) > 1:
                log(f"exporting the single best member {report.best_single} (pass --force-ensemble to export the blend)")
            chosen = {report.best_single: 1.0}

        parent = candidates[0].parent_run_id
        tags = {TAG_KIND: "ensemble", TAG_PREFIX + "method": options.method}  # state: set by tracker.run when it ends
        if options.study:
            tags[TAG_PREFIX + "study"] = options.study
        with tracker.run(f"ensemble-{options.method}", tags, parent) as ensemble_run:
            tracker.log_params(
                ensemble_run,
                {
                    "method": options.method,
                    "members": ",".join(report.member_names),
                    "weights": json.dumps(dict(zip(report.member_names, [round(w, 6) for w in report.weights]))),
                    "exported": json.dumps(chosen),
                    "trials": options.trials,
                    "seed": options.seed,
                    "val_size": report.val_size,
                },
            )
            tracker.log_metrics(
                ensemble_run,
                {
                    "holdout_ensemble_macro_f1": report.holdout_ensemble,
                    "holdout_best_single_macro_f1": report.holdout_best_single,
                    **{f"holdout_macro_f1.{name[:12]}": v for name, v in report.holdout_members.items()},
                },
            )
            _log_report(tracker, ensemble_run, report, members, confusion_png, exp, tmp)
            # Inside the ensemble run: a failed refit or export leaves it FAILED, not FINISHED.
            refit_runs: dict[str, str] = {}
            export_dir = None
            if options.export is not None or options.refit:
                by_id = {c.run_id: c for c in candidates}
                model_runs = dict.fromkeys(chosen)
                if options.refit:
                    from .train import refit as refit_run

                    for run_id in chosen:
                        member_exp = _member_experiment(tracker, run_id, exp, tmp)
                        epochs = max(1, by_id[run_id].best_epoch)
                        log(f"refitting {run_id} on train+val for {epochs} epochs")
                        refit_runs[run_id] = refit_run(
                            member_exp, epochs, tracker=tracker, refit_of=run_id, parent_run_id=parent, progress=log
                        )
                    model_runs = dict(refit_runs)
                if options.export is not None:
                    export_dir = _export(
                        tracker,
                        options.export,
                        chosen,
                        model_runs,
                        by_id,
                        report,
                        exp,
                        options.study,
                        options.method,
                        ensemble_run,
                        tmp,
                        force=options.force,
                        register=options.register,
                        tracking_uri=target.uri,
                    )
                    log(f"exported to {export_dir}")
    return BestResult(
        candidates=candidates,
        report=report,
        exported_members=list(chosen),
        weights=list(chosen.values()),
        ensemble_run_id=ensemble_run,
        export_dir=export_dir,
        refit_runs=refit_runs,
    )


def check_metric_name(metric: str) -> str:
    """``metric`` if MLflow could have logged it (its allowed characters), else a one-line error."""
    if not METRIC_NAME.fullmatch(metric):
        raise FlowerExpError(f"--metric {metric!r}: not a metric name; allowed: letters, digits, spaces and _ - . / :")
    return metric


def _check_export_writable(out: Path) -> None:
    """Refuse an export folder that cannot be created (read-only disk, permissions) before
    the weight search and refits, not after them."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FlowerExpError(f"{out}: cannot create it, {parent} is not a folder; nothing written")
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "not writable"
        raise FlowerExpError(f"{out}: cannot write the export ({parent} is {reason}); nothing written")


def _log_report(tracker, run_id, report, members, confusion_png, exp, tmp) -> None:
    import csv

    import numpy as np

    from .ensemble import align, combine

    folder = Path(tmp) / "ensemble-report"
    folder.mkdir()
    with open(folder / "weight_search_trials.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phase", "number", "value", "weights"])
        for rec in report.search_trials:
            writer.writerow([rec.get("phase", ""), rec.get("number", ""), rec.get("value", ""), json.dumps(rec.get("weights"))])
    summary = {k: v for k, v in report.__dict__.items() if k != "search_trials"}
    (folder / "ensemble_report.json").write_text(json.dumps(summary, indent=2, default=float))
    _ids, labels, stack = align(members)
    names = _class_names(exp)
    probs = combine(stack, np.asarray(report.weights))
    confusion_png(probs, labels, names, str(folder / "confusion_matrix.png"), "ensemble on validation (final weights)")
    tracker.log_artifact(run_id, str(folder), "ensemble-report")


def _class_names(exp) -> list[str]:
    from .data.dataset import open_data

    return open_data(exp).class_names


def _member_experiment(tracker, run_id: str, exp, tmp: str):
    """The member run's exact configuration (its config.yaml artifact) on this experiment's data."""
    path = tracker.download(run_id, "config.yaml", os.path.join(tmp, run_id))
    data = read_yaml(Path(path))
    for key in ("data_dir", "classes"):
        data.pop(key, None)
    data.update(
        data_dir=exp.config.data_dir,
        generate=exp.config.generate,
        classes=exp.config.classes,
        classes_file=exp.config.classes_file,
        extra_data=exp.config.extra_data,
        cache_dir=exp.config.cache_dir,
    )
    cfg = ExperimentConfig.model_validate(data)
    return resolve(cfg, Path(exp.config_path), os.environ)


def _export(
    tracker, out, chosen, model_runs, by_id, report, exp, study, method, ensemble_run, tmp, *, force, register, tracking_uri
):
    from .export import ExportMember, write_export
    from .models import normalization_for

    members = []
    for run_id, weight in chosen.items():
        source_run = model_runs[run_id] or run_id
        model_path = tracker.download(source_run, "model/model.keras", os.path.join(tmp, "models", source_run))
        c = by_id[run_id]
        members.append(
            ExportMember(
                run_id=source_run,
                architecture=c.architecture,
                image_size=c.image_size,
                normalization=normalization_for(c.architecture),
                weight=float(weight),
                model_path=model_path,
                scores={"val_macro_f1": c.score, "holdout_macro_f1": report.holdout_members.get(run_id, float("nan"))},
            )
        )
    info = {
        "experiment": exp.name,
        "study": study,
        "method": method,
        "ensemble_run_id": ensemble_run,
        "selected_runs": [c.run_id for c in by_id.values()],
        "refit_of": {v: k for k, v in model_runs.items() if v and v != k},
        "holdout": {
            "ensemble_macro_f1": report.holdout_ensemble,
            "best_single_macro_f1": report.holdout_best_single,
            "ensemble_wins": report.ensemble_wins,
        },
    }
    return write_export(
        out,
        members=members,
        class_names=_class_names(exp),
        info=info,
        force=force,
        register_name=register,
        tracking_uri=tracking_uri,
    )
