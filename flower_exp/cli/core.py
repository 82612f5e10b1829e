"""What every command module shares: the Typer app, the two consoles, the global ``--config``
state, the common options and the console-script entry point.

stdout carries data, stderr logs and errors (see ``out`` and ``err`` below). Heavy libraries
are imported inside commands, never here, so ``flower-exp --help`` starts instantly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperOption

from .. import __version__
from ..errors import FlowerExpError

app = typer.Typer(
    name="flower-exp",
    help="Experiment-tracking sweep harness for image classification (Optuna + Keras + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
    typer.Option(
        "--set", help="Override a setting, KEY=VALUE (dotted keys for nested ones, e.g. augment.flip=false). Repeatable."
    ),
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
    from ..config import load_experiment

    return load_experiment(name, state.config, overrides or [])


def _log(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/dim]")


TrackingOpt = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)."),
]


def main() -> None:
    """Console-script entry point: runs the app, mapping user errors to exit 2.

    The commands are registered by importing the ``flower_exp.cli`` package, which any import
    of this module does first."""
    try:
        app()
    except FlowerExpError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
