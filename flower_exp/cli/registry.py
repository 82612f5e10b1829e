"""The commands that list what a run can be built from: ``models`` (the registered
architectures) and ``weights`` (the pretrained weights files and where they are looked for)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import FlowerExpError
from .core import ExperimentOpt, app, err, out, state

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
        typer.Option(
            "--params",
            help="Also count each listed network's parameters (builds it without pretrained "
            "weights: seconds for each large EfficientNet on a CPU).",
        ),
    ] = False,
    image_size: Annotated[
        Optional[int],
        typer.Option("--image-size", help="Build at this input size for the counts (implies --params; default 224)."),
    ] = None,
    classes: Annotated[int, typer.Option("--classes", help="Classes of the softmax head counted with --params.")] = 104,
) -> None:
    """The registered architectures (`--set architecture=NAME`): family, the `weights` values each
    accepts, the input normalization the data pipeline applies and, with --params, the parameter count."""
    from ..models import accepted_weights, select_models

    specs = select_models(names or [])
    count = params or image_size is not None
    size = 224 if image_size is None else image_size
    if count and size < 32:
        raise FlowerExpError(f"--image-size {size}: must be at least 32 (the smallest input the pretrained families build at)")
    if count and classes < 2:
        raise FlowerExpError(f"--classes {classes}: must be at least 2")
    columns = ["architecture", "family", "weights", "normalization"]
    rows = [
        [s.name, s.family, ", ".join(accepted_weights(s)), _NORMALIZATION_MEANING.get(s.normalization, s.normalization)]
        for s in specs
    ]
    if count:
        from ..models import count_params

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
    out.print(
        "cnn: width and depth are the cnn_width / cnn_depth settings (counted at 32 and 4)"
        if count
        else "parameter counts: flower-exp models NAME... --params [--image-size N]"
    )
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
    from ..config import experiment_settings, weights_dir_of
    from ..models import find_weights_file, select_models, weights_file, weights_folders

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
    out.print(
        "a missing file downloads on first use when online; offline, put it in one of the folders above"
        + ("" if urls else " (--urls: where to get it)")
    )
