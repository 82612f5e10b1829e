"""Command line: a thin Typer layer over importable functions.

Each command parses flags, loads the config and calls one function. TensorFlow (and other
heavy libraries) are imported inside commands, so ``flower-exp --help`` starts instantly.
User errors (:class:`FlowerExpError`) print one line and exit 2; Ctrl-C exits 130, and a sweep
stopped by SIGTERM or SIGHUP exits 128 + the signal (143, 129).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperOption

from . import __version__
from .errors import FlowerExpError

app = typer.Typer(
    name="flower-exp",
    help="Experiment-tracking sweep harness for image classification (Optuna + Keras + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect and validate experiments.yaml.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets in the competition TFRecord layout.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

# stdout carries data (tables, YAML, paths, class names, descriptions like "[0, 1]"), never
# styling: without markup every character prints as written. stderr keeps markup for its
# colours, so text printed there goes through `escape`.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_typer_display_type_rich = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx) -> str | None:
    """Typer 0.29's rich help lists every flag as taking a ``<bool>`` value (its plain help
    does not): a flag takes no value, so show none."""
    return None if self.is_flag or self.count else _typer_display_type_rich(self, ctx)


TyperOption.display_type_rich = _display_type_rich


class _State:
    config: Optional[str] = None


state = _State()

ExperimentOpt = Annotated[
    Optional[str], typer.Option("--experiment", "-e", help="Experiment name from experiments.yaml (default: its `default`).")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a setting, KEY=VALUE (dotted keys for nested ones, e.g. augment.flip=false). Repeatable."),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"flower-exp {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="experiments.yaml to use (default: ./experiments.yaml, else the packaged one)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """flower-exp: sweep, track, ensemble and export image classifiers."""
    state.config = str(config) if config else None


def _experiment(name: Optional[str], overrides: Optional[list[str]] = None):
    from .config import load_experiment

    return load_experiment(name, state.config, overrides or [])


def _log(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/dim]")


BudgetOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Wall-clock budget (e.g. 90s, 30m, 1.5h; plain numbers are minutes): the command is over by then, "
        "including the run training at that moment (it stops at an epoch boundary and keeps its best epoch).",
    ),
]


def _budget_minutes(budget: Optional[str]) -> Optional[float]:
    from .budget import parse_minutes

    return None if budget is None else parse_minutes(budget)


def _deadline(budget: Optional[str]):
    """The deadline of a ``--budget`` option, counted from now (None without one)."""
    if budget is None:
        return None
    from .budget import Deadline, parse_minutes

    return Deadline.in_minutes(parse_minutes(budget))


TrackingOpt = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)."),
]


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
    strategy: Annotated[
        Optional[str], typer.Option(help="auto, tpu, mirrored, gpu or cpu (same as --set strategy=...).")
    ] = None,
    cpu_replicas: Annotated[
        int, typer.Option("--cpu-replicas", help="Split the CPU into N logical devices (to try strategy=mirrored without GPUs).")
    ] = 1,
    budget: BudgetOpt = None,
) -> None:
    """Train one model and record params, per-epoch metrics and artifacts in MLflow."""
    deadline = _deadline(budget)
    exp = _experiment(experiment, [*(set_ or []), *([f"strategy={strategy}"] if strategy else [])])
    if cpu_replicas > 1:
        from .strategy import split_cpu

        split_cpu(cpu_replicas)
    from .signals import interrupt_once
    from .train import run

    bars = []
    if not quiet and err.is_terminal:
        from .progress import epoch_bar

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
    from .config import project_dir
    from .runs import list_runs
    from .tracking import default_target

    exp = _experiment(experiment)
    target = default_target(project_dir(Path(exp.config_path)), tracking_uri)
    runs = list_runs(target, exp.name, top, study)
    where = f"study {study}" if study else f"experiment {exp.name}"
    if not runs.rows:
        out.print(f"no trial runs yet in {where}" if study else
                  f"no runs yet in {where}; start one with: flower-exp train -e {exp.name}")
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
    from .signals import exit_status

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
    new: Annotated[bool, typer.Option("--new/--resume", help="Start a new study instead of resuming (refuses to replace one without --force).")] = False,
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

    from .progress import QuietProgress, SweepDisplay
    from .study import SweepOptions, run_sweep

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
    out.print(
        f"study {result.study_name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
    )
    if result.best:
        table = Table(title="best trials (val_macro_f1)")
        for column in ("trial", "val_macro_f1", "best epoch"):
            table.add_column(column, justify="right")
        table.add_column("MLflow run", no_wrap=True, min_width=32)
        for row in result.best:
            table.add_row(str(row["number"]), f"{row['value']:.4f}", str(row["best_epoch"] or ""), row["run_id"])
        out.print(table)
        for row in result.best:
            out.print(f"  trial {row['number']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row["params"].items()))
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
    from .study import study_status

    info = study_status(experiment=experiment, sweep=sweep, study_name=study, storage=storage, config=state.config, top=top)
    counts = ", ".join(f"{v} {k}" for k, v in info["counts"].items() if k != "finished")
    out.print(f"study {info['study']} ({info['storage']}): {counts}")
    best = info["best"]
    if best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        out.print(f"best: trial {best['number']} val_macro_f1 {best['value']:.4f} ({params}); MLflow run {best['run_id']}")
        names = list(dict.fromkeys(name for row in info["top"] for name in row["params"]))
        rows = [[str(row["number"]), row["state"], f"{row['value']:.4f}", str(row["best_epoch"] or ""),
                 *(_fmt(row["params"][n]) if n in row["params"] else "" for n in names), row["run_id"]]
                for row in info["top"]]
        columns = ["trial", "state", "val_macro_f1", "best epoch", *names, "MLflow run"]
        out.print(_table(f"top {len(rows)} trials (val_macro_f1)", columns, rows))
    out.print(f"MLflow parent run: {info['parent_run_id']}")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command("best")
def best_command(
    experiment: ExperimentOpt = None,
    study: Annotated[Optional[str], typer.Option(help="Only this study's trials (default: every finished run of the experiment).")] = None,
    top: Annotated[int, typer.Option("--top", "-k", help="How many runs to consider.")] = 3,
    metric: Annotated[str, typer.Option(help="Ranking metric (per-run best).")] = "val_macro_f1",
    diverse: Annotated[bool, typer.Option("--diverse", help="At most one run per architecture.")] = False,
    method: Annotated[str, typer.Option(help="Weight search: optuna, greedy (Caruana selection) or mean.")] = "optuna",
    trials: Annotated[int, typer.Option(help="Weight-search trials (optuna) or rounds (greedy).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the validation split and the weight search.")] = 0,
    export: Annotated[Optional[Path], typer.Option(help="Write a self-contained export to this folder.")] = None,
    refit: Annotated[bool, typer.Option("--refit", help="Retrain each exported member on train+val for its best epoch count.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export.")] = False,
    force_ensemble: Annotated[bool, typer.Option("--force-ensemble", help="Export the blend even if it does not beat the best single member.")] = False,
    register: Annotated[Optional[str], typer.Option(help="Also register the export in the MLflow model registry under this name.")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Select the best runs, search ensemble weights honestly (fit on one half of validation,
    score on the other, both ways), log an ensemble run, optionally refit and export."""
    from .best import BestOptions, run_best

    options = BestOptions(
        experiment=experiment, study=study, top=top, metric=metric, diverse=diverse, method=method, trials=trials,
        seed=seed, export=str(export) if export else None, refit=refit, force=force, force_ensemble=force_ensemble,
        register=register, tracking_uri=tracking_uri, config=state.config,
    )
    result = run_best(options, log=lambda m: err.print(escape(m)))
    report = result.report
    table = Table(title="ensemble members (held-out macro-F1: mean over the two validation halves)")
    for column in ("run", "architecture", "size", "val_macro_f1", "held-out", "weight"):
        table.add_column(column, justify="left" if column in ("run", "architecture") else "right")
    weights = dict(zip(report.member_names, report.weights))
    for c in result.candidates:
        table.add_row(c.run_id, c.architecture, str(c.image_size), f"{c.score:.4f}",
                      f"{report.holdout_members.get(c.run_id, float('nan')):.4f}", f"{weights.get(c.run_id, 0.0):.3f}")
    out.print(table)
    out.print(f"held-out ensemble {report.holdout_ensemble:.4f} vs best single member {report.holdout_best_single:.4f} (picked on the fit half, like the weights)")
    out.print(f"exported members: {', '.join(result.exported_members)}; MLflow ensemble run {result.ensemble_run_id}")
    if result.export_dir:
        out.print(f"next: flower-exp predict {result.export_dir} --test   |   flower-exp predict {result.export_dir} IMAGE_OR_URL")


@app.command("predict")
def predict_command(
    export_dir: Annotated[Path, typer.Argument(help="Export folder written by flower-exp best --export.")],
    sources: Annotated[Optional[list[str]], typer.Argument(help="Image files or http(s) URLs.")] = None,
    test: Annotated[bool, typer.Option("--test", help="Predict the experiment's test split and write a submission CSV.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Dataset root for --test (default: the export's experiment's data_dir).")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="Submission file for --test.")] = Path("submission.csv"),
    labels: Annotated[Optional[Path], typer.Option(help="id,label CSV to score --test against (default: DATA/test_labels.csv if present).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average each image with its left-right flip.")] = False,
    top_n: Annotated[int, typer.Option("--top", help="Classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Predict image files, URLs or the test split with an exported ensemble.

    With one image or URL, a bad input is the command's error (exit 2, one line). With
    several, each bad one is reported on stderr, the others are predicted, and the exit
    status is 1 if any was bad.
    """
    from .export_format import load_export
    from .predictor import predict_payloads, predict_sources, predict_test, read_image

    if not test and not sources:
        raise FlowerExpError("nothing to predict: give image files/URLs or --test")
    # A single input is read and checked before any model loads: a bad one fails fast.
    single = read_image(sources[0]) if sources and len(sources) == 1 else None
    ensemble = load_export(str(export_dir))
    if test:
        root = data
        if root is None:
            from .data.dataset import open_data

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
            out.print_json(json.dumps([{"source": r.source, "error": r.error, "top": [{"class": c, "probability": p} for c, p in r.top]} for r in results]))
        else:
            for r in results:
                if r.error:
                    err.print(f"[red]{escape(r.source)}[/red]: {escape(r.error)}")
                else:
                    out.print(f"{r.source}: " + ", ".join(f"{c} {p:.3f}" for c, p in r.top))
        if any(r.error for r in results):
            raise typer.Exit(1)


LOOPBACK = "127.0.0.1"


def bind_warning(host: str, what: str = "your runs") -> str | None:
    """The warning for a server of ``what`` bound to ``host``; None for a loopback address."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return f"warning: binding to {host}: anyone who can reach this machine can read and change {what}"


def ui_argv(mlflow_bin: str, target, host: str = LOOPBACK, port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow ui`` command line for ``target`` (a :class:`TrackingTarget`) and the
    environment it needs. The host is always explicit, so MLflow's own default never decides
    what is exposed; the store URI travels in the environment (``MLFLOW_BACKEND_STORE_URI``),
    not on the command line, where ``ps`` would show a database password to every user."""
    command = [mlflow_bin, "ui", "--host", host, "--port", str(port)]
    if target.artifact_root:
        command += ["--default-artifact-root", Path(target.artifact_root).as_uri()]
    # The UI needs no job runner (MLflow 3 starts ~8 extra processes, ~2 GB, for it).
    return command, {"MLFLOW_BACKEND_STORE_URI": target.uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@app.command("ui")
def ui_command(
    experiment: Annotated[
        Optional[str], typer.Option("--experiment", "-e", help="Print only this experiment's pages (default: every experiment with runs).")
    ] = None,
    tracking_uri: TrackingOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback exposes your runs to the network.")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Open the MLflow UI on this project's runs (http://127.0.0.1:5000 by default) and print the
    pages to start from: each experiment's runs table, its latest sweep and a comparison of its trials."""
    import os
    import shutil

    from .config import find_config, project_dir
    from .tracking import default_target, prepare_store, redact, sweep_overviews
    from .ui_links import base_url, links

    target = default_target(project_dir(find_config(state.config)), tracking_uri)
    # Create a new project's store here, under flower-exp's lock: `mlflow ui` would migrate it
    # without one, racing any sweep that starts at the same time.
    prepare_store(target)
    warning = bind_warning(host)
    if warning:
        err.print(f"[yellow]{escape(warning)}[/yellow]")
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if mlflow_bin is None:
        raise FlowerExpError("the mlflow command is not installed; pip install mlflow")
    command, ui_env = ui_argv(mlflow_bin, target, host, port)
    base = base_url(host, port)
    err.print(f"MLflow UI for {escape(redact(target.uri))} on {base} (Ctrl-C to stop)")
    try:
        pages = links(sweep_overviews(target), base, experiment)
    except FlowerExpError as exc:
        # The server may still come up (a database that is starting); it reports its own errors.
        err.print(f"[yellow]could not list the runs: {escape(str(exc))}[/yellow]", soft_wrap=True)
    else:
        for page in pages:
            err.print(f"  {escape(page.label)}: {escape(page.url)}", soft_wrap=True)
        if not pages:
            where = f" in experiment {experiment}" if experiment else ""
            err.print(f"  no runs yet{escape(where)}: start with flower-exp sweep", soft_wrap=True)
    # The user's environment may switch the job runner back on, but not change the store.
    env = {**ui_env, **os.environ, "MLFLOW_BACKEND_STORE_URI": target.uri}
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server, so signals (Ctrl-C, kill) reach it directly and nothing is orphaned.
    os.execve(mlflow_bin, command, env)


@app.command("dashboard")
def dashboard_command(
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage (default: the project's journal file).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback exposes your studies to the network.")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8080,
) -> None:
    """Live view of the project's Optuna studies (optuna-dashboard: history, importances, trials
    as they finish), also while a sweep is running; http://127.0.0.1:8080 by default."""
    from .study.dashboard import dashboard_studies, resolve_storage, serve_dashboard
    from .tracking import redact
    from .ui_links import base_url

    url = resolve_storage(storage, state.config)
    warning = bind_warning(host, "your studies")
    if warning:
        err.print(f"[yellow]{escape(warning)}[/yellow]")
    base = base_url(host, port)
    studies = dashboard_studies(url, base)
    err.print(f"Optuna dashboard for {escape(redact(url))} on {base}/dashboard (Ctrl-C to stop)")
    for study in studies:
        err.print(f"  {escape(study.name)} ({study.trials} trials): {escape(study.url)}", soft_wrap=True)
    if not studies:
        err.print("  no studies yet: start one with flower-exp sweep")
    serve_dashboard(url, host, port)


# --------------------------------------------------------------------------- models

# What each normalization feeds the network (flower_exp.data.pipeline.normalize).
_NORMALIZATION_MEANING = {
    "unit": "unit (0-1)",
    "raw": "raw (0-255)",
    "torch": "torch (ImageNet mean/std)",
    "tf": "tf (-1-1)",
}


@app.command("models")
def models_command(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Only these architectures: names or patterns, e.g. 'efficientnet_b*'.")
    ] = None,
    params: Annotated[
        bool,
        typer.Option("--params", help="Also count each listed network's parameters (builds it without pretrained "
                                      "weights: seconds for each large EfficientNet on a CPU)."),
    ] = False,
    image_size: Annotated[
        Optional[int], typer.Option("--image-size", help="Build at this input size for the counts (implies --params; default 224).")
    ] = None,
    classes: Annotated[int, typer.Option("--classes", help="Classes of the softmax head counted with --params.")] = 104,
) -> None:
    """The registered architectures (`--set architecture=NAME`): family, the `weights` values each
    accepts, the input normalization the data pipeline applies and, with --params, the parameter count."""
    from .models import accepted_weights, select_models

    specs = select_models(names or [])
    count = params or image_size is not None
    size = 224 if image_size is None else image_size
    if count and size < 32:
        raise FlowerExpError(f"--image-size {size}: must be at least 32 (the smallest input the pretrained families build at)")
    if count and classes < 2:
        raise FlowerExpError(f"--classes {classes}: must be at least 2")
    columns = ["architecture", "family", "weights", "normalization"]
    rows = [[s.name, s.family, ", ".join(accepted_weights(s)), _NORMALIZATION_MEANING.get(s.normalization, s.normalization)]
            for s in specs]
    if count:
        from .models import count_params

        columns.append(f"params ({size} px, {classes} classes)")
        for spec, row in zip(specs, rows):
            with err.status(f"building {spec.name}..."):
                row.append(f"{count_params(spec.name, image_size=size, num_classes=classes):,}")
    table = Table(title="registered architectures")
    for column in columns:
        table.add_column(column, justify="right" if column.startswith("params") else "left", no_wrap=column == "architecture")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print("weights: also a local weights file of the headless network; pretrained = the last one listed before it")
    out.print("cnn: width and depth are the cnn_width / cnn_depth settings (counted at 32 and 4)" if count
              else "parameter counts: flower-exp models NAME... --params [--image-size N]")
    out.print("next: flower-exp train --set architecture=NAME --set weights=none   (or a sweep's params/fixed)")


@app.command("weights")
def weights_command(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Only these architectures: names or patterns, e.g. 'efficientnet_b*'.")
    ] = None,
    experiment: ExperimentOpt = None,
    urls: Annotated[bool, typer.Option("--urls", help="Also print the URL each listed file downloads from, one a line.")] = False,
) -> None:
    """The pretrained weights file each architecture and `weights` value needs, where flower-exp looks
    for it (the experiment's weights_dir, $FLOWER_EXP_WEIGHTS, Keras' cache) and whether it is there.
    A file found is used as is, without downloading: copy the files to an offline machine."""
    from .config import experiment_settings, weights_dir_of
    from .models import find_weights_file, select_models, weights_file, weights_folders

    specs = select_models(names or [])
    config_path, name, settings = experiment_settings(experiment, state.config)
    weights_dir = weights_dir_of(settings, config_path)
    table = Table(title="pretrained weights files")
    for column in ("architecture", "weights", "file", "present"):
        table.add_column(column, no_wrap=column in ("architecture", "file"))
    sources = []
    for spec in specs:
        for weights in spec.pretrained:
            file, url = weights_file(spec, weights)
            found = find_weights_file(spec, weights, weights_dir)
            table.add_row(spec.name, weights, file, f"yes ({found[0]})" if found else "no")
            sources.append(url)
    out.print(table)
    if urls:
        # Unwrapped, one a line, so they can be copied or fed to a downloader (wget -i).
        out.print("download URLs:")
        for url in sources:
            out.print(url)
    out.print("looked for in this order; the first folder that has the file is used, without downloading:")
    for number, (label, folder) in enumerate(weights_folders(weights_dir), 1):
        where = f" of experiment {name!r}" if label == "weights_dir" else ""
        out.print(f"  {number}. {label}{where}: {folder or 'not set'}")
    scratch = [spec.name for spec in specs if not spec.pretrained]
    if scratch:
        out.print(f"{', '.join(scratch)}: no pretrained weights (trained from scratch)")
    out.print("a missing file downloads on first use when online; offline, put it in one of the folders above"
              + ("" if urls else " (--urls: where to get it)"))


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    experiment: ExperimentOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Validate experiments.yaml and print one experiment's resolved configuration."""
    exp = _experiment(experiment, set_)
    resolved = exp.config.model_dump(mode="json")
    resolved["data_dir"] = exp.data_dir
    resolved["cache_dir"] = exp.cache_dir
    resolved["weights_dir"] = exp.weights_dir
    resolved["extra_data"] = [e.model_dump(mode="json") for e in exp.extra_data]
    if exp.class_names is not None:
        resolved["classes"] = exp.class_names
        resolved.pop("classes_file", None)
    if as_json:
        out.print_json(json.dumps({"config_file": exp.config_path, "experiment": resolved}))
        return
    out.print(f"# config file: {exp.config_path}")
    if exp.class_names is None:
        out.print(f"# classes: read from {exp.data_dir}/classes.txt")
    out.print(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=1000).rstrip())


@config_app.command("keys")
def config_keys() -> None:
    """List every experiment setting with its default and description."""
    from .config import describe_fields

    table = Table("key", "default", "description", show_lines=False)
    for key, default, description in describe_fields():
        table.add_row(key, default, description)
    out.print(table)


# --------------------------------------------------------------------------- data


@data_app.command("demo")
def data_demo(
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Output folder (default: the demo experiment's data_dir).")
    ] = None,
    experiment: ExperimentOpt = None,
    classes: Annotated[Optional[int], typer.Option(help="Number of classes (2-104).")] = None,
    per_class: Annotated[Optional[int], typer.Option("--per-class", help="Images per class over all splits.")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated square sizes, e.g. 32,64.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed (same seed, identical bytes).")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Shards per split.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Generate the synthetic demo dataset in the exact competition layout.

    Defaults come from the experiment's `generate` recipe (experiment `demo` unless -e).
    """
    from .config import DemoSpec
    from .data.demo import generate_demo

    # --out alone uses the built-in recipe; otherwise the experiment's recipe and folder.
    exp = _experiment(experiment) if out_dir is None or experiment else None
    if exp is not None and exp.config.generate is None:
        raise FlowerExpError(
            f"{exp.config_path}: experiments.{exp.name}.generate: not set; {exp.name!r} is not generated data "
            "(pick a generated experiment with -e, or pass --out DIR)"
        )
    spec = exp.config.generate if exp is not None else DemoSpec()
    target = str(out_dir) if out_dir is not None else exp.data_dir
    info = generate_demo(
        target,
        classes=classes if classes is not None else spec.classes,
        per_class=per_class if per_class is not None else spec.per_class,
        sizes=_int_list(sizes, "--sizes") if sizes else spec.sizes,
        seed=seed if seed is not None else spec.seed,
        shards=shards if shards is not None else spec.shards,
        force=force,
    )
    counts = ", ".join(f"{k} {v}" for k, v in info.counts.items())
    out.print(f"wrote demo dataset to {info.root}: {len(info.classes)} classes, sizes {info.sizes}, {counts}")
    out.print(f"next: flower-exp data inspect {info.root}")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[
        Optional[str], typer.Argument(help="Dataset root (local folder or gs:// URL). Default: the experiment's data_dir.")
    ] = None,
    experiment: ExperimentOpt = None,
    size: Annotated[Optional[int], typer.Option(help="Which tfrecords-jpeg-SxS folder (default: the largest).")] = None,
    skip_corrupt: Annotated[
        bool, typer.Option("--skip-corrupt", help="Report corrupt records/shards and go on instead of stopping.")
    ] = False,
    sheet: Annotated[
        Optional[Path], typer.Option(help="Contact-sheet PNG to write (default: ./contact-sheet-<S>.png).")
    ] = None,
    no_sheet: Annotated[bool, typer.Option("--no-sheet", help="Do not write a contact sheet.")] = False,
    samples: Annotated[int, typer.Option(help="Images on the contact sheet.")] = 24,
) -> None:
    """Splits, shard and record counts, image sizes, class histogram, duplicate ids, contact sheet."""
    from .data import records
    from .data.inspect import inspect_dataset, render_report

    class_names = None
    if path is None:
        from .data.dataset import open_data

        data = open_data(_experiment(experiment), log=_log)
        path, class_names = data.root, data.class_names
    if size is None:
        sizes = records.available_sizes(path)
        size = sizes[-1] if sizes else None
    sheet_path = None if no_sheet else str(sheet or Path.cwd() / f"contact-sheet-{size}.png")
    with err.status("reading shards..."):
        report = inspect_dataset(
            path, size=size, skip_corrupt=skip_corrupt, sheet_path=sheet_path, sheet_samples=samples, class_names=class_names
        )
    render_report(report, out)


@data_app.command("import-folder")
def data_import_folder(
    src: Annotated[Path, typer.Argument(help="Folder with one subfolder of images (JPEG/PNG) per class.")],
    experiment: Annotated[
        Optional[str],
        typer.Option(
            "--experiment", "-e",
            help="Also add experiment NAME reading the dataset to ./experiments.yaml (created if missing; "
            "--config PATH for another), so `flower-exp sweep -e NAME` works right away.",
        ),
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Output dataset root (competition layout). Default with --experiment: data/NAME.")
    ] = None,
    sizes: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated square sizes to write, e.g. 224,331 (default: 224; with --experiment "
                          "64,96,128,224: the CPU sweep's sizes, and 224 for pretrained networks)."),
    ] = None,
    val: Annotated[float, typer.Option(help="Validation fraction per class.")] = 0.15,
    test: Annotated[float, typer.Option(help="Test fraction per class (0: no test split).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    shards: Annotated[int, typer.Option(help="Shards per split.")] = 8,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels (decompression bombs).")] = 40_000_000,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing dataset at --out (and, with --experiment, an experiment of that name).")
    ] = False,
) -> None:
    """Convert class-per-subfolder images into the competition TFRecord layout (and, with
    --experiment, into a ready-to-sweep experiment)."""
    from rich.progress import Progress

    from .data.importer import import_experiment, import_folder

    if out_dir is None and experiment is None:
        raise FlowerExpError("give --experiment NAME (dataset in data/NAME, experiment added to experiments.yaml) or --out DIR")
    size_list = _int_list(sizes, "--sizes") if sizes else None
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("importing images", total=None)
        options = dict(
            val_fraction=val,
            test_fraction=test,
            seed=seed,
            shards=shards,
            max_pixels=max_pixels,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
        if size_list:  # else each function's own default sizes
            options["sizes"] = size_list
        if experiment is not None:
            added = import_experiment(
                str(src), experiment, config=state.config, out=str(out_dir) if out_dir else None, force=force, **options
            )
            report = added.report
        else:
            report = import_folder(str(src), str(out_dir), force=force, **options)
    for item in report.skipped:
        err.print(f"[yellow]skipped[/yellow] {escape(str(item))}")
    for item in report.duplicates:
        err.print(f"[yellow]duplicate[/yellow] {escape(str(item))}")
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    out.print(
        f"wrote {report.out}: {len(report.classes)} classes, sizes {report.sizes}, {counts}; "
        f"{len(report.skipped)} skipped, {len(report.duplicates)} duplicates"
    )
    if experiment is None:
        out.print(f"next: flower-exp data inspect {shlex.quote(report.out)}")
        return
    settings = ", ".join(f"{k}={v}" for k, v in added.settings.items() if k != "description")
    out.print(f"added experiment {added.name!r} to {added.config_path} ({settings})")
    # A config file other than ./experiments.yaml must be named again in the next commands.
    config = "" if added.config_path == Path.cwd() / "experiments.yaml" else f"--config {shlex.quote(str(added.config_path))} "
    out.print(f"next: flower-exp {config}sweep -e {added.name} -s cpu --budget 30m")


@data_app.command("check-leakage")
def data_check_leakage(
    experiment: ExperimentOpt = None,
    set_: SetOpt = None,
    size: Annotated[Optional[int], typer.Option(help="Image size to read (default: the experiment's image_size).")] = None,
    max_distance: Annotated[
        Optional[int], typer.Option("--max-distance", help="Hamming distance (of 64) counted as the same photo.")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the leaking pairs (default: ./leakage-<experiment>.png).")] = None,
) -> None:
    """Find the same photo across train/val/test and between extra_data and val/test."""
    from .data.dataset import open_data
    from .data.leakage import check_leakage, plot_pairs

    exp = _experiment(experiment, set_)
    data = open_data(exp, log=_log)
    with err.status("hashing images..."):
        report = check_leakage(
            data.root,
            size=size or exp.config.image_size,
            extra=data.extra,
            max_distance=exp.config.leakage.max_distance if max_distance is None else max_distance,
            cache_dir=exp.cache_dir,
        )
    checked = ", ".join(f"{k} {v}" for k, v in report.checked.items())
    out.print(f"checked {checked} (max distance {report.max_distance})")
    if not report.pairs:
        out.print("no leakage found")
        return
    table = Table("kind", "pairs")
    for kind, n in report.by_kind().items():
        table.add_row(kind, str(n))
    out.print(table)
    for pair in report.pairs[:20]:
        out.print(f"  {pair.a.split}:{pair.a.id} ~ {pair.b.split}:{pair.b.id}  distance {pair.distance}  ({pair.a.source} / {pair.b.source})")
    target = str(plot or Path.cwd() / f"leakage-{exp.name}.png")
    plot_pairs(report, target)
    out.print(f"{len(report.pairs)} leaking pairs; picture: {target}")
    raise typer.Exit(1)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FlowerExpError(f"{flag} {text!r}: expected comma-separated integers, e.g. 32,64") from None
    if not values or any(v <= 0 for v in values):
        raise FlowerExpError(f"{flag} {text!r}: expected positive integers, e.g. 32,64")
    return values


def main() -> None:
    """Console-script entry point: runs the app, mapping user errors to exit 2."""
    try:
        app()
    except FlowerExpError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
