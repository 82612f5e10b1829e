"""The commands around runs and studies: ``train``, ``runs``, ``sweep``, ``status``, ``best``
and ``predict``.

``train`` and ``sweep`` exit 128 + the signal when SIGTERM or SIGHUP stops them (143, 129),
Ctrl-C 130.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import FlowerExpError
from .core import ExperimentOpt, SetOpt, TrackingOpt, _experiment, _log, app, err, out, state

BudgetOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Wall-clock budget (e.g. 90s, 30m, 1.5h; plain numbers are minutes): the command is over by then, "
        "including the run training at that moment (it stops at an epoch boundary and keeps its best epoch).",
    ),
]


def _budget_minutes(budget: Optional[str]) -> Optional[float]:
    from ..budget import parse_minutes

    return None if budget is None else parse_minutes(budget)


def _deadline(budget: Optional[str]):
    """The deadline of a ``--budget`` option, counted from now (None without one)."""
    if budget is None:
        return None
    from ..budget import Deadline, parse_minutes

    return Deadline.in_minutes(parse_minutes(budget))


# --------------------------------------------------------------------------- train / runs


@app.command("train")
def train_command(
    experiment: ExperimentOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="MLflow run name (default: ARCH-SIZEpx).")] = None,
    allow_leakage: Annotated[
        bool, typer.Option("--allow-leakage", help="Train even if an extra_data source contains val/test images.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log lines only, no progress bar.")] = False,
    strategy: Annotated[Optional[str], typer.Option(help="auto, tpu, mirrored, gpu or cpu (same as --set strategy=...).")] = None,
    cpu_replicas: Annotated[
        int, typer.Option("--cpu-replicas", help="Split the CPU into N logical devices (to try strategy=mirrored without GPUs).")
    ] = 1,
    budget: BudgetOpt = None,
) -> None:
    """Train one model and record params, per-epoch metrics and artifacts in MLflow."""
    deadline = _deadline(budget)
    exp = _experiment(experiment, [*(set_ or []), *([f"strategy={strategy}"] if strategy else [])])
    if cpu_replicas > 1:
        from ..strategy import split_cpu

        split_cpu(cpu_replicas)
    from ..signals import interrupt_once
    from ..train import run

    bars = []
    if not quiet and err.is_terminal:
        from ..progress import epoch_bar

        bars.append(epoch_bar(err))
    # SIGTERM/SIGHUP (timeout, Slurm, Kubernetes) end the run KILLED like Ctrl-C, not RUNNING.
    with _stop_signal_exit_status(), interrupt_once():
        try:
            result = run(
                exp,
                tracking_uri=tracking_uri,
                run_name=run_name,
                allow_leakage=allow_leakage,
                progress=lambda message: err.print(escape(message)),
                callbacks=bars,
                deadline=deadline,
            )
        finally:
            for bar in bars:
                bar.close()
    out.print(
        f"run {result.run_id}: best val_macro_f1 {result.best_val_macro_f1:.4f} at epoch {result.best_epoch} "
        f"of {result.epochs_run}"
    )
    out.print("next: flower-exp runs -e " + exp.name + "   |   flower-exp ui")


@app.command("runs")
def runs_command(
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingOpt = None,
    top: Annotated[int, typer.Option("--top", "-n", help="How many runs to show.")] = 20,
    study: Annotated[Optional[str], typer.Option(help="Only this study's trials, its searched parameters as columns.")] = None,
) -> None:
    """Table of an experiment's trained runs, best validation macro-F1 first, with the searched
    parameters (sweep parents, ensembles and refits are not listed)."""
    from ..config import project_dir
    from ..runs import list_runs
    from ..tracking import default_target

    exp = _experiment(experiment)
    target = default_target(project_dir(Path(exp.config_path)), tracking_uri)
    runs = list_runs(target, exp.name, top, study)
    where = f"study {study}" if study else f"experiment {exp.name}"
    if not runs.rows:
        out.print(
            f"no trial runs yet in {where}"
            if study
            else f"no runs yet in {where}; start one with: flower-exp train -e {exp.name}"
        )
    else:
        out.print(_table(f"runs of {where} (best val_macro_f1 first)", runs.columns, runs.rows))
    if runs.parent_run_id:
        out.print(f"MLflow parent run: {runs.parent_run_id}")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """A table of display strings: columns of numbers right-aligned, run ids never wrapped."""
    table = Table(title=title)
    for index, column in enumerate(columns):
        if column in ("run", "MLflow run"):  # copied into other commands: whole, on one line
            table.add_column(column, no_wrap=True, min_width=max((len(row[index]) for row in rows), default=0))
            continue
        numeric = all(_is_number(row[index]) for row in rows if row[index])
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@contextmanager
def _stop_signal_exit_status() -> Iterator[None]:
    """Typer exits 130 on any KeyboardInterrupt; a sweep or run stopped by SIGTERM or SIGHUP (its
    trials and runs marked by then) exits 128 + the signal, as a shell reports a death by it."""
    from ..signals import exit_status

    try:
        yield
    except KeyboardInterrupt as exc:
        status = exit_status(exc)
        err.print("interrupted" if status == 130 else f"interrupted ({exc})")
        raise typer.Exit(status) from None


@app.command("sweep")
def sweep_command(
    experiment: ExperimentOpt = None,
    sweep: Annotated[
        Optional[str], typer.Option("--sweep", "-s", help="Sweep name in sweeps/ (e.g. demo, petals-seed) or a YAML path.")
    ] = None,
    trials: Annotated[Optional[int], typer.Option(help="Total trials (finished + pruned) the study should reach.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Minutes after which no new trial starts.")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes sharing the study.")] = 1,
    study: Annotated[Optional[str], typer.Option(help="Study name (default: EXPERIMENT-SWEEP).")] = None,
    storage: Annotated[
        Optional[str], typer.Option(help="Optuna storage: journal file path or postgresql:// / mysql:// / sqlite:/// URL.")
    ] = None,
    tracking_uri: TrackingOpt = None,
    new: Annotated[
        bool,
        typer.Option("--new/--resume", help="Start a new study instead of resuming (refuses to replace one without --force)."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --new: delete an existing study of that name first.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed (default: the sweep file's).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One line per trial instead of per epoch.")] = False,
    budget: BudgetOpt = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Fix a setting for every trial, KEY=VALUE, over the sweep file's `fixed` (as for train --set; "
            "a key the sweep searches is refused). Repeatable.",
        ),
    ] = None,
) -> None:
    """Run (or resume) an Optuna sweep; every trial is an MLflow child run of one parent run."""
    from contextlib import nullcontext

    from ..progress import QuietProgress, SweepDisplay
    from ..study import SweepOptions, run_sweep

    live = err.is_terminal and workers == 1
    display = SweepDisplay(err, trials) if live else None
    events = display
    if not live and quiet and workers == 1:
        events = QuietProgress(lambda line: err.print(escape(line)))
    with _stop_signal_exit_status(), display if display is not None else nullcontext():
        options = SweepOptions(
            experiment=experiment,
            sweep=sweep,
            trials=trials,
            timeout_min=timeout,
            budget_min=_budget_minutes(budget),
            workers=workers,
            study_name=study,
            storage=storage,
            tracking_uri=tracking_uri,
            new=new,
            force=force,
            seed=seed,
            overrides=set_ or [],
            config=state.config,
            quiet=quiet,
        )
        result = run_sweep(options, log=lambda message: err.print(escape(message)), on_event=events)
    counts = result.counts
    out.print(f"study {result.study_name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed")
    if result.best:
        table = Table(title="best trials (val_macro_f1)")
        for column in ("trial", "val_macro_f1", "best epoch"):
            table.add_column(column, justify="right")
        table.add_column("MLflow run", no_wrap=True, min_width=32)
        for row in result.best:
            table.add_row(str(row.number), f"{row.value:.4f}", str(row.best_epoch or ""), row.run_id)
        out.print(table)
        for row in result.best:
            out.print(f"  trial {row.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items()))
    out.print(f"MLflow parent run: {result.parent_run_id}")
    out.print("next:")
    out.print("  flower-exp ui                                    # compare the runs side by side")
    out.print(f"  flower-exp status -e {result.experiment} --study {result.study_name}")
    out.print(f"  flower-exp best -e {result.experiment} --study {result.study_name} --export exports/{result.study_name}")


@app.command("status")
def status_command(
    experiment: ExperimentOpt = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", "-s", help="Sweep name or file (names the study).")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name (default: EXPERIMENT-SWEEP).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage (default: the project's journal file).")] = None,
    top: Annotated[int, typer.Option("--top", "-n", help="How many of the best trials to show.")] = 5,
) -> None:
    """Summarise a study: trials by state, the best trials with their params and MLflow runs
    (no TensorFlow)."""
    from ..study import study_status

    info = study_status(experiment=experiment, sweep=sweep, study_name=study, storage=storage, config=state.config, top=top)
    counts = ", ".join(f"{v} {k}" for k, v in info.counts.items() if k != "finished")
    out.print(f"study {info.study} ({info.storage}): {counts}")
    best = info.best
    if best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        out.print(f"best: trial {best.number} val_macro_f1 {best.value:.4f} ({params}); MLflow run {best.run_id}")
        names = list(dict.fromkeys(name for row in info.top for name in row.params))
        rows = [
            [
                str(row.number),
                row.state,
                f"{row.value:.4f}",
                str(row.best_epoch or ""),
                *(_fmt(row.params[n]) if n in row.params else "" for n in names),
                row.run_id,
            ]
            for row in info.top
        ]
        columns = ["trial", "state", "val_macro_f1", "best epoch", *names, "MLflow run"]
        out.print(_table(f"top {len(rows)} trials (val_macro_f1)", columns, rows))
    out.print(f"MLflow parent run: {info.parent_run_id}")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command("best")
def best_command(
    experiment: ExperimentOpt = None,
    study: Annotated[
        Optional[str], typer.Option(help="Only this study's trials (default: every finished run of the experiment).")
    ] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="How many runs to consider.")] = 3,
    metric: Annotated[str, typer.Option(help="Ranking metric (per-run best).")] = "val_macro_f1",
    diverse: Annotated[bool, typer.Option("--diverse", help="At most one run per architecture.")] = False,
    method: Annotated[str, typer.Option(help="Weight search: optuna, greedy (Caruana selection) or mean.")] = "optuna",
    trials: Annotated[int, typer.Option(help="Weight-search trials (optuna) or rounds (greedy).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the validation split and the weight search.")] = 0,
    export: Annotated[Optional[Path], typer.Option(help="Write a self-contained export to this folder.")] = None,
    refit: Annotated[
        bool, typer.Option("--refit", help="Retrain each exported member on train+val for its best epoch count.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export.")] = False,
    force_ensemble: Annotated[
        bool, typer.Option("--force-ensemble", help="Export the blend even if it does not beat the best single member.")
    ] = False,
    register: Annotated[
        Optional[str], typer.Option(help="Also register the export in the MLflow model registry under this name.")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Select the best runs, search ensemble weights honestly (fit on one half of validation,
    score on the other, both ways), log an ensemble run, optionally refit and export."""
    from ..best import BestOptions, run_best

    options = BestOptions(
        experiment=experiment,
        study=study,
        top=top,
        metric=metric,
        diverse=diverse,
        method=method,
        trials=trials,
        seed=seed,
        export=str(export) if export else None,
        refit=refit,
        force=force,
        force_ensemble=force_ensemble,
        register=register,
        tracking_uri=tracking_uri,
        config=state.config,
    )
    result = run_best(options, log=lambda m: err.print(escape(m)))
    report = result.report
    table = Table(title="ensemble members (held-out macro-F1: mean over the two validation halves)")
    for column in ("run", "architecture", "size", "val_macro_f1", "held-out", "weight"):
        table.add_column(column, justify="left" if column in ("run", "architecture") else "right")
    weights = dict(zip(report.member_names, report.weights))
    for c in result.candidates:
        table.add_row(
            c.run_id,
            c.architecture,
            str(c.image_size),
            f"{c.score:.4f}",
            f"{report.holdout_members.get(c.run_id, float('nan')):.4f}",
            f"{weights.get(c.run_id, 0.0):.3f}",
        )
    out.print(table)
    out.print(
        f"held-out ensemble {report.holdout_ensemble:.4f} vs best single member {report.holdout_best_single:.4f} (picked on the fit half, like the weights)"
    )
    out.print(f"exported members: {', '.join(result.exported_members)}; MLflow ensemble run {result.ensemble_run_id}")
    if result.export_dir:
        out.print(
            f"next: flower-exp predict {result.export_dir} --test   |   flower-exp predict {result.export_dir} IMAGE_OR_URL"
        )


@app.command("predict")
def predict_command(
    export_dir: Annotated[Path, typer.Argument(help="Export folder written by flower-exp best --export.")],
    sources: Annotated[Optional[list[str]], typer.Argument(help="Image files or http(s) URLs.")] = None,
    test: Annotated[bool, typer.Option("--test", help="Predict the experiment's test split and write a submission CSV.")] = False,
    data: Annotated[
        Optional[str], typer.Option(help="Dataset root for --test (default: the export's experiment's data_dir).")
    ] = None,
    out_file: Annotated[Path, typer.Option("--out", help="Submission file for --test.")] = Path("submission.csv"),
    labels: Annotated[
        Optional[Path], typer.Option(help="id,label CSV to score --test against (default: DATA/test_labels.csv if present).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average each image with its left-right flip.")] = False,
    top_n: Annotated[int, typer.Option("--top", help="Classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Predict image files, URLs or the test split with an exported ensemble.

    With one image or URL, a bad input is the command's error (exit 2, one line). With
    several, each bad one is reported on stderr, the others are predicted, and the exit
    status is 1 if any was bad.
    """
    from ..export_format import load_export
    from ..predictor import predict_payloads, predict_sources, predict_test, read_image

    if not test and not sources:
        raise FlowerExpError("nothing to predict: give image files/URLs or --test")
    # A single input is read and checked before any model loads: a bad one fails fast.
    single = read_image(sources[0]) if sources and len(sources) == 1 else None
    ensemble = load_export(str(export_dir))
    if test:
        root = data
        if root is None:
            from ..data.dataset import open_data

            name = ensemble.info.get("experiment")
            root = open_data(_experiment(name), log=_log).root
        path, score = predict_test(ensemble, root, str(out_file), tta=tta, labels_csv=str(labels) if labels else None)
        if as_json:
            out.print_json(json.dumps({"submission": path, "test_macro_f1": score}))
        else:
            out.print(f"wrote {path}" + (f"; test macro-F1 {score:.4f}" if score is not None else ""))
    if sources:
        if single is not None:
            results = predict_payloads(ensemble, list(sources), [single], top=top_n, tta=tta)
            if results[0].error:
                raise FlowerExpError(f"{sources[0]}: {results[0].error}")
        else:
            results = predict_sources(ensemble, list(sources), top=top_n, tta=tta)
        if as_json:
            out.print_json(
                json.dumps(
                    [
                        {"source": r.source, "error": r.error, "top": [{"class": c, "probability": p} for c, p in r.top]}
                        for r in results
                    ]
                )
            )
        else:
            for r in results:
                if r.error:
                    err.print(f"[red]{escape(r.source)}[/red]: {escape(r.error)}")
                else:
                    out.print(f"{r.source}: " + ", ".join(f"{c} {p:.3f}" for c, p in r.top))
        if any(r.error for r in results):
            raise typer.Exit(1)
