"""The commands that start a server: ``ui`` (MLflow's UI, which this process becomes) and
``dashboard`` (optuna-dashboard). Both bind loopback unless told otherwise, with a warning."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..errors import FlowerExpError
from .core import TrackingOpt, app, err, state

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
        Optional[str],
        typer.Option("--experiment", "-e", help="Print only this experiment's pages (default: every experiment with runs)."),
    ] = None,
    tracking_uri: TrackingOpt = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes your runs to the network.")
    ] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Open the MLflow UI on this project's runs (http://127.0.0.1:5000 by default) and print the
    pages to start from: each experiment's runs table, its latest sweep and a comparison of its trials."""
    import os
    import shutil

    from ..config import find_config, project_dir
    from ..tracking import default_target, prepare_store, redact, sweep_overviews
    from ..ui_links import base_url, links

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
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes your studies to the network.")
    ] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8080,
) -> None:
    """Live view of the project's Optuna studies (optuna-dashboard: history, importances, trials
    as they finish), also while a sweep is running; http://127.0.0.1:8080 by default."""
    from ..study.dashboard import dashboard_studies, resolve_storage, serve_dashboard
    from ..tracking import redact
    from ..ui_links import base_url

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
