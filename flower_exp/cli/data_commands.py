"""The ``data`` commands: datasets in the competition TFRecord layout (generate the demo,
inspect, import a folder of images, check for leakage)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import FlowerExpError
from .core import ExperimentOpt, SetOpt, _experiment, _log, app, err, out, state

data_app = typer.Typer(help="Datasets in the competition TFRecord layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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
    from ..config import DemoSpec
    from ..data.demo import generate_demo

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
    sheet: Annotated[Optional[Path], typer.Option(help="Contact-sheet PNG to write (default: ./contact-sheet-<S>.png).")] = None,
    no_sheet: Annotated[bool, typer.Option("--no-sheet", help="Do not write a contact sheet.")] = False,
    samples: Annotated[int, typer.Option(help="Images on the contact sheet.")] = 24,
) -> None:
    """Splits, shard and record counts, image sizes, class histogram, duplicate ids, contact sheet."""
    from ..data import records
    from ..data.inspect import inspect_dataset, render_report

    class_names = None
    if path is None:
        from ..data.dataset import open_data

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
            "--experiment",
            "-e",
            help="Also add experiment NAME reading the dataset to ./experiments.yaml (created if missing; "
            "--config PATH for another), so `flower-exp sweep -e NAME` works right away.",
        ),
    ] = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Output dataset root (competition layout). Default with --experiment: data/NAME."),
    ] = None,
    sizes: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated square sizes to write, e.g. 224,331 (default: 224; with --experiment "
            "64,96,128,224: the CPU sweep's sizes, and 224 for pretrained networks)."
        ),
    ] = None,
    val: Annotated[float, typer.Option(help="Validation fraction per class.")] = 0.15,
    test: Annotated[float, typer.Option(help="Test fraction per class (0: no test split).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    shards: Annotated[int, typer.Option(help="Shards per split.")] = 8,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse images with more pixels (decompression bombs).")
    ] = 40_000_000,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing dataset at --out (and, with --experiment, an experiment of that name)."
        ),
    ] = False,
) -> None:
    """Convert class-per-subfolder images into the competition TFRecord layout (and, with
    --experiment, into a ready-to-sweep experiment)."""
    from rich.progress import Progress

    from ..data.importer import import_experiment, import_folder

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
    from ..data.dataset import open_data
    from ..data.leakage import check_leakage, plot_pairs

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
        out.print(
            f"  {pair.a.split}:{pair.a.id} ~ {pair.b.split}:{pair.b.id}  distance {pair.distance}  ({pair.a.source} / {pair.b.source})"
        )
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
