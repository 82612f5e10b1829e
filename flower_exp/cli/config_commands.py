"""The ``config`` commands: inspect and validate experiments.yaml."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from rich.table import Table

from .core import ExperimentOpt, SetOpt, _experiment, app, out

config_app = typer.Typer(help="Inspect and validate experiments.yaml.", no_args_is_help=True)
app.add_typer(config_app, name="config")


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
    from ..config import describe_fields

    table = Table("key", "default", "description", show_lines=False)
    for key, default, description in describe_fields():
        table.add_row(key, default, description)
    out.print(table)
