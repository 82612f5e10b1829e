"""``flower-exp data inspect``: what a dataset in the competition layout really contains.

Before spending accelerator hours on a dataset it pays to read it once end to end: every
shard is framed, every record parsed and every JPEG decoded, so a truncated upload or a
mislabeled folder shows up here rather than at epoch 7. The report compares record counts
from file names (what the notebooks trust) with records actually read, histograms image
sizes and classes per split, finds duplicate ids within and across splits, and can draw a
contact sheet of training images with their class names.

All IO goes through :mod:`flower_exp.data.records` / ``tf.io.gfile``, so ``gs://`` works
like a local folder. :func:`inspect_dataset` never prints; :func:`render_report` does.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import DataError
from .records import (
    CLASSES_FILE,
    LABELED_SPLITS,
    SHARD_RE,
    SPLITS,
    available_sizes,
    count_from_name,
    exists,
    iter_shard,
    join,
    read_classes_file,
    shard_files,
    size_dir,
)

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

# Decode at this size or a little more (JPEG DCT scaling): the whole compressed body is still
# read, so truncation is caught, at a fraction of the cost of a full decode.
_CHECK_PX = 32
_THUMB_PX = 128
_EXAMPLES = 5  # ids quoted in a problem line


@dataclass
class SplitStats:
    """What one split holds. ``records_read`` counts valid records only."""

    split: str
    shards: int
    records_by_name: int
    records_read: int
    image_sizes: dict[tuple[int, int], int]
    class_counts: dict[int, int]
    duplicate_ids: list[str]
    partial: bool = False  # reading stopped at ``max_records``


@dataclass
class InspectReport:
    """Result of :func:`inspect_dataset`; ``problems`` empty means the dataset looks sound."""

    root: str
    size: int
    sizes_available: list[int]
    splits: dict[str, SplitStats]
    class_names: list[str] | None
    duplicate_ids_across_splits: list[str]
    problems: list[str]
    sheet_path: str | None
    missing_splits: list[str] = field(default_factory=list)


class _Sampler:
    """Keeps a few thumbnails per class, spread so every class can appear on the sheet.

    Memory stays bounded by about ``total`` + number of classes thumbnails whatever the
    dataset size: as more classes turn up, each keeps fewer.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.by_class: dict[int, list] = {}

    def _cap(self) -> int:
        return max(1, math.ceil(self.total / max(1, len(self.by_class))))

    def wants(self, label: int) -> bool:
        kept = self.by_class.get(label)
        return kept is None or len(kept) < self._cap()

    def add(self, label: int, thumb) -> None:
        self.by_class.setdefault(label, []).append(thumb)
        cap = self._cap()
        for kept in self.by_class.values():
            del kept[cap:]

    def pick(self) -> list[tuple[int, object]]:
        classes = sorted(self.by_class)
        if len(classes) > self.total:
            # More classes than cells: one image each from classes spread over the range.
            step = len(classes) / self.total
            return [(classes[int(i * step)], self.by_class[classes[int(i * step)]][0]) for i in range(self.total)]
        picked: list[tuple[int, object]] = []
        for round_ in range(self._cap()):
            picked += [(c, self.by_class[c][round_]) for c in classes if round_ < len(self.by_class[c])]
        return picked[: self.total]


def _decode(jpeg: bytes, thumb: bool):
    """``((width, height), thumbnail or None)``; raises on data Pillow cannot decode."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        if image.format != "JPEG":
            raise ValueError(f"{image.format} data, not JPEG")
        size = image.size
        target = _THUMB_PX if thumb else _CHECK_PX
        image.draft("RGB", (target, target))
        image.load()
        if not thumb:
            return size, None
        small = image.convert("RGB")
        small.thumbnail((_THUMB_PX, _THUMB_PX))
        return size, small


def _examples(ids: list[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLES])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _EXAMPLES else "")


def inspect_dataset(
    root: str,
    *,
    size: int | None = None,
    skip_corrupt: bool = False,
    sheet_path: str | None = None,
    sheet_samples: int = 24,
    class_names: list[str] | None = None,
    max_records: int | None = None,
) -> InspectReport:
    """Read the ``size``×``size`` shards under ``root`` (default: largest size) end to end.

    Corrupt data (a truncated shard, a record without ``image``/``id``, a labeled record
    without ``class``, an image that is not a decodable JPEG) raises :class:`DataError`
    naming the file and record index; with ``skip_corrupt`` it becomes a line in
    ``problems`` and reading goes on. Count mismatches, missing train/val splits, duplicate
    ids, unexpected image sizes and labels outside the class list are always reported as
    problems. ``max_records`` caps the records read per split (a quick look); ``sheet_path``
    writes a PNG contact sheet of ``sheet_samples`` training images.
    """
    sizes = available_sizes(root)
    if not sizes:
        raise DataError(f"{root}: no tfrecords-jpeg-SxS folders; expected ROOT/tfrecords-jpeg-SxS/{{train,val,test}}/*.tfrec")
    if size is None:
        size = sizes[-1]
    elif size not in sizes:
        available = ", ".join(map(str, sizes))
        raise DataError(f"{root}: no tfrecords-jpeg-{size}x{size} folder; available sizes: {available}")
    if sheet_samples < 1:
        raise DataError(f"sheet_samples must be at least 1, got {sheet_samples}")
    if max_records is not None and max_records < 1:
        raise DataError(f"max_records must be at least 1, got {max_records}")

    if class_names is None and exists(join(root, CLASSES_FILE)):
        class_names = read_classes_file(join(root, CLASSES_FILE))

    problems: list[str] = []
    splits: dict[str, SplitStats] = {}
    missing: list[str] = []
    split_of_id: dict[str, set[str]] = defaultdict(set)
    sampler = _Sampler(sheet_samples) if sheet_path else None

    for split in SPLITS:
        try:
            files = shard_files(root, size, split)
        except DataError as exc:
            missing.append(split)
            if split != "test":  # the test split is optional (e.g. a private copy)
                problems.append(str(exc))
            continue
        stats, ids = _read_split(
            split,
            files,
            size,
            skip_corrupt,
            max_records,
            class_names,
            problems,
            sampler if split == "train" else None,
        )
        splits[split] = stats
        for record_id in ids:
            split_of_id[record_id].add(split)

    across = sorted(i for i, where in split_of_id.items() if len(where) > 1)
    if across:
        problems.append(f"{len(across)} ids appear in more than one split: {_examples(across)}")

    written = None
    if sheet_path:
        picks = sampler.pick() if sampler else []
        if picks:
            _write_sheet(sheet_path, picks, class_names, f"{root} - {size}x{size} train")
            written = sheet_path
        else:
            problems.append(f"contact sheet not written: no readable labeled train images in {size_dir(root, size)}")

    return InspectReport(
        root=root,
        size=size,
        sizes_available=sizes,
        splits=splits,
        class_names=class_names,
        duplicate_ids_across_splits=across,
        problems=problems,
        sheet_path=written,
        missing_splits=missing,
    )


def _read_split(
    split: str,
    files: list[str],
    size: int,
    skip_corrupt: bool,
    max_records: int | None,
    class_names: list[str] | None,
    problems: list[str],
    sampler: _Sampler | None,
) -> tuple[SplitStats, list[str]]:
    """Stats of one split and its distinct ids; appends to ``problems``."""
    by_name = 0
    read = 0
    partial = False
    image_sizes: Counter = Counter()
    class_counts: Counter = Counter()
    id_counts: Counter = Counter()
    labeled = split in LABELED_SPLITS

    def bad(message: str) -> None:
        if not skip_corrupt:
            raise DataError(message)
        problems.append(message)

    for path in files:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        match = SHARD_RE.match(name)
        if not match:
            problems.append(f"{path}: shard name does not match NN-SxS-COUNT.tfrec (record count unknown)")
            continue
        by_name += count_from_name(path)
        if (int(match.group(2)), int(match.group(3))) != (size, size):
            problems.append(f"{path}: name says {match.group(2)}x{match.group(3)} but the folder is {size}x{size}")

    for path in files:
        errors: list[str] = []
        for index, record in iter_shard(path, skip_corrupt=skip_corrupt, errors=errors):
            if labeled and record.label is None:
                bad(f"{path}: record {index}: no class in a labeled split; expected class (int64)")
                continue
            want_thumb = sampler is not None and record.label is not None and sampler.wants(record.label)
            try:
                dims, thumb = _decode(record.image, want_thumb)
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
                bad(f"{path}: record {index}: JPEG data cannot be decoded ({exc})")
                continue
            read += 1
            image_sizes[dims] += 1
            id_counts[record.id] += 1
            if record.label is not None:
                class_counts[record.label] += 1
            if thumb is not None:
                sampler.add(record.label, thumb)
            if max_records is not None and read >= max_records:
                partial = True
                break
        problems.extend(errors)
        if partial:
            break

    where = f"{split} ({len(files)} shards)"
    if not partial and read != by_name:
        problems.append(f"{where}: file names say {by_name} records but {read} valid records were read")
    odd = {dims: n for dims, n in image_sizes.items() if dims != (size, size)}
    if odd:
        found = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(odd.items()))
        problems.append(f"{where}: {sum(odd.values())} images are not {size}x{size} ({found})")
    if class_names is not None:
        outside = sum(n for label, n in class_counts.items() if not 0 <= label < len(class_names))
        if outside:
            problems.append(
                f"{where}: {outside} records have a class outside 0..{len(class_names) - 1} "
                f"({len(class_names)} class names); check the class names file"
            )
    duplicates = sorted(i for i, n in id_counts.items() if n > 1)
    if duplicates:
        problems.append(f"{where}: {len(duplicates)} ids occur more than once: {_examples(duplicates)}")

    return SplitStats(
        split=split,
        shards=len(files),
        records_by_name=by_name,
        records_read=read,
        image_sizes=dict(sorted(image_sizes.items())),
        class_counts=dict(sorted(class_counts.items())),
        duplicate_ids=duplicates,
        partial=partial,
    ), list(id_counts)


def _write_sheet(path: str, picks: list[tuple[int, object]], class_names: list[str] | None, title: str) -> None:
    """Render the contact sheet PNG and move it into place (never a half-written file)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    from .._imports import tensorflow

    cols = min(6, len(picks))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(cols * 1.9, rows * 2.2 + 0.4), dpi=100)
    fig.suptitle(title, fontsize=9)
    for slot, (label, thumb) in enumerate(picks):
        ax = fig.add_subplot(rows, cols, slot + 1)
        pixels = np.asarray(thumb)
        # Tiny images (32 px) are shown as their pixels; larger ones smoothly.
        ax.imshow(pixels, interpolation="nearest" if pixels.shape[1] < _THUMB_PX else "antialiased")
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else None
        caption = f"{label}: {name}" if name else f"class {label}"
        ax.set_title(textwrap.fill(caption, 20), fontsize=7)
        ax.set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")

    tf = tensorflow()
    gfile = tf.io.gfile
    parent, _, name = path.rstrip("/").rpartition("/")
    tmp_name = f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = f"{parent}/{tmp_name}" if parent else tmp_name
    try:
        if parent:
            gfile.makedirs(parent)
        with gfile.GFile(tmp, "wb") as fh:
            fh.write(buffer.getvalue())
        gfile.rename(tmp, path, overwrite=True)
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot write the contact sheet ({exc.message}); choose another --sheet") from exc
    finally:
        if gfile.exists(tmp):
            gfile.remove(tmp)


def render_report(report: InspectReport, console: Console) -> None:
    """Print ``report`` as rich tables: splits, image sizes, classes, duplicates, problems."""
    from rich.table import Table
    from rich.text import Text

    console.print(
        Text.assemble(
            ("Dataset ", "bold"),
            (report.root, "cyan"),
            f"  at {report.size}x{report.size}",
            f"  (sizes available: {', '.join(map(str, report.sizes_available))})",
        )
    )

    table = Table(title="Splits", title_justify="left")
    for column in ("split", "shards", "records (file names)", "records read", "image sizes", "duplicate ids"):
        table.add_column(column, justify="left" if column in ("split", "image sizes") else "right")
    for split in SPLITS:
        stats = report.splits.get(split)
        if stats is None:
            note = "missing (allowed)" if split == "test" else "missing"
            table.add_row(split, "-", "-", "-", Text(note, style="yellow" if split == "test" else "bold red"), "-")
            continue
        if stats.partial:
            read = Text(f"{stats.records_read} (stopped early)", style="yellow")
        elif stats.records_read != stats.records_by_name:
            read = Text(f"{stats.records_read} ≠", style="bold red")
        else:
            read = Text(str(stats.records_read), style="green")
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in stats.image_sizes.items()) or "-"
        dups = Text(str(len(stats.duplicate_ids)), style="bold red" if stats.duplicate_ids else "")
        table.add_row(split, str(stats.shards), str(stats.records_by_name), read, sizes, dups)
    console.print(table)

    labels = sorted({label for stats in report.splits.values() for label in stats.class_counts})
    names = report.class_names
    if names is not None:
        labels = sorted(set(labels) | set(range(len(names))))
    counted = [s for s in SPLITS if s in report.splits and report.splits[s].class_counts]
    if labels and counted:
        classes = Table(title="Classes", title_justify="left")
        classes.add_column("#", justify="right")
        classes.add_column("name")
        for split in counted:
            classes.add_column(split, justify="right")
        classes.add_column("")
        totals = {label: sum(report.splits[s].class_counts.get(label, 0) for s in counted) for label in labels}
        peak = max(totals.values()) or 1
        for label in labels:
            name = names[label] if names is not None and 0 <= label < len(names) else Text("(no name)", style="red")
            cells = [str(report.splits[s].class_counts.get(label, 0)) for s in counted]
            bar = Text("█" * max(0, round(24 * totals[label] / peak)), style="magenta" if totals[label] else "")
            classes.add_row(str(label), name, *cells, bar)
        console.print(classes)

    if report.duplicate_ids_across_splits:
        console.print(Text(f"Ids in more than one split: {_examples(report.duplicate_ids_across_splits)}", style="bold red"))
    if report.problems:
        console.print(Text(f"Problems ({len(report.problems)}):", style="bold red"))
        for problem in report.problems:
            console.print(Text(f"  - {problem}", style="red"))
    else:
        console.print(Text("No problems found.", style="bold green"))
    if report.sheet_path:
        console.print(Text.assemble("Contact sheet: ", (report.sheet_path, "cyan")))
