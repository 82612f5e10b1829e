"""Image folders → competition TFRecords (``flower-exp data import-folder SRC --out DIR``), and
as a new experiment of the project (``--experiment NAME``: :func:`import_experiment`).

``SRC`` holds one subfolder per class (class names are the sorted folder names) with
``.jpg`` / ``.jpeg`` / ``.png`` images. Every image is center-cropped to a square, resized to
each requested size and re-encoded as JPEG; the result is split train/val/test per class
(seeded) and written in the competition layout, so everything downstream reads it like the
Kaggle data::

    OUT/tfrecords-jpeg-{S}x{S}/{train,val,test}/NN-{S}x{S}-COUNT.tfrec
    OUT/classes.txt        class names, one per line, in label order
    OUT/test_labels.csv    id,label of the (unlabeled) test split, in record order
    OUT/import.json        the recipe, the source and the counts

Record ids come from the content (first 9 hex digits of the SHA-256 of the file bytes, like
the competition's 9-character ids), so importing the same files again gives the same ids and
the same split. Unreadable or oversized images are skipped and reported, not fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import records

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMPORT_FILE = "import.json"
_POOL_MIN_FILES = 8  # below this a worker pool costs more than it saves


@dataclass
class ImportReport:
    """What :func:`import_folder` wrote and what it left out."""

    out: str
    classes: list[str]
    sizes: list[int]
    counts: dict[str, int]  # split -> records written (per size; every size holds the same images)
    skipped: list[str] = field(default_factory=list)  # "path: reason" (unreadable, refused)
    duplicates: list[str] = field(default_factory=list)  # "path: same bytes as OTHER"


@dataclass(frozen=True)
class _Image:
    path: str
    label: int
    digest: str  # full sha256 hex of the file bytes


def import_folder(
    src: str,
    out: str,
    *,
    sizes: Sequence[int] = (224,),
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    shards: int = 8,
    max_pixels: int = 40_000_000,
    quality: int = 95,
    force: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import ``src`` (one folder per class) into a new competition-layout dataset at ``out``.

    ``workers`` decoding threads (default: up to 2) are used for larger folders; results do
    not depend on it. ``progress(done, total)`` is called as images are processed.
    """
    sizes = _check_args(sizes, val_fraction, test_fraction, shards, max_pixels, quality)
    src_path, out_path = _check_paths(src, out, force)
    classes, files = _scan(src_path)

    # Everything is written to a temp folder beside ``out`` and renamed into place at the end.
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.parent / f".{out_path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    staging = tmp / ".staging"  # encoded JPEGs wait on disk, not in memory
    staging.mkdir()
    try:
        images: list[_Image] = []
        skipped: list[str] = []
        results = _process_all([p for p, _ in files], str(staging), sizes, max_pixels, quality, workers, progress)
        for (path, label), (digest, reason) in zip(files, results):
            if reason is not None:
                skipped.append(f"{path}: {reason}")
            else:
                images.append(_Image(path, label, digest))

        images, duplicates = _dedupe(images, classes)
        ids = assign_ids([img.digest for img in images])
        per_class = [[img for img in images if img.label == c] for c in range(len(classes))]
        for name, members in zip(classes, per_class):
            if not members:
                raise DataError(f"{src_path / name}: no readable images (all skipped); fix or remove the folder")
        splits = _split(per_class, val_fraction, test_fraction, seed)
        split_names = ["train", "val"] + (["test"] if test_fraction > 0 else [])
        for name in split_names:
            if not splits[name]:
                raise DataError(
                    f"{src_path}: {len(images)} usable image(s) are too few for a {name} split; "
                    f"add images{' or set test_fraction 0' if name == 'test' else ''}"
                )
        counts = {name: len(splits[name]) for name in split_names}

        for size in sizes:
            for name in split_names:
                recs = [
                    records.Record(image=_staged(staging, img.digest, size).read_bytes(), id=ids[img.digest], label=img.label)
                    for img in splits[name]
                ]
                records.write_split(str(tmp), size, name, recs, shards)
        shutil.rmtree(staging)
        records.write_text(records.join(str(tmp), records.CLASSES_FILE), "".join(f"{c}\n" for c in classes))
        if "test" in split_names:
            rows = "".join(f"{ids[img.digest]},{img.label}\n" for img in splits["test"])
            records.write_text(records.join(str(tmp), records.TEST_LABELS_FILE), "id,label\n" + rows)
        manifest = {
            "format": "flower-exp import-folder",
            "version": 1,
            "source": str(src_path),
            "recipe": {
                "sizes": sizes,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "shards": shards,
                "max_pixels": max_pixels,
                "quality": quality,
                "resize": "center-crop square, LANCZOS",
                "id": "sha256(file bytes)[:9]",
            },
            "classes": classes,
            "counts": counts,
            "per_class": {
                cname: {s: sum(1 for img in splits[s] if img.label == c) for s in split_names} for c, cname in enumerate(classes)
            },
            "skipped": skipped,
            "duplicates": duplicates,
        }
        records.write_text(records.join(str(tmp), IMPORT_FILE), json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    return ImportReport(out=str(out_path), classes=classes, sizes=sizes, counts=counts, skipped=skipped, duplicates=duplicates)


# --------------------------------------------------------------------------- as an experiment

# What `import-folder --experiment` writes by default: the sizes sweeps/cpu.yaml searches
# (each trial then reads its own size instead of resizing a larger one every epoch), plus 224
# px, the usual input of pretrained networks.
EXPERIMENT_SIZES = (64, 96, 128, 224)
# The experiment's own image_size (what `train -e NAME` uses; cpu.yaml searches its own) is
# that of cpu.yaml's first, enqueued configuration, and its batch size a CPU's usual one.
EXPERIMENT_IMAGE_SIZE = 96
EXPERIMENT_BATCH_SIZE = 32
MAX_SHUFFLE_BUFFER = 2048


@dataclass(frozen=True)
class ExperimentImport:
    """What :func:`import_experiment` wrote: the dataset and the experiment pointing at it."""

    report: ImportReport
    name: str
    config_path: Path
    settings: dict[str, Any]


def import_experiment(
    src: str,
    name: str,
    *,
    config: str | os.PathLike | None = None,
    out: str | None = None,
    sizes: Sequence[int] | None = None,
    force: bool = False,
    **options: Any,
) -> ExperimentImport:
    """:func:`import_folder`, then add experiment ``name`` reading the new dataset to the
    project's ``experiments.yaml`` (``config``, else ``./experiments.yaml``, created if missing),
    so that ``flower-exp sweep -e NAME`` works without editing a file.

    ``out`` defaults to ``data/NAME`` beside the config file and ``sizes`` to
    :data:`EXPERIMENT_SIZES`; ``options`` are :func:`import_folder`'s. The name, the config file
    and an existing experiment of that name (refused unless ``force``) are checked before
    anything is written; ``force`` also replaces an existing dataset at ``out``.
    """
    from ..config import add_experiment, check_new_experiment, writable_config

    config_path = writable_config(config)
    check_new_experiment(config_path, name, force)
    target = out if out is not None else str(config_path.parent / "data" / name)
    report = import_folder(src, target, sizes=sizes or EXPERIMENT_SIZES, force=force, **options)
    settings = experiment_settings(report, config_path.parent)
    add_experiment(config_path, name, settings, f"flower-exp data import-folder from {src}", force=force)
    return ExperimentImport(report=report, name=name, config_path=config_path, settings=settings)


def experiment_settings(report: ImportReport, project: Path) -> dict[str, Any]:
    """The experiment of an imported dataset: its folder relative to ``project`` (the config
    file's folder, so the project can move) and CPU-sized defaults the data can serve."""
    try:
        data_dir = Path(os.path.relpath(report.out, project)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        data_dir = Path(report.out).as_posix()
    return {
        "description": f"{len(report.classes)} classes of photos imported by flower-exp data import-folder",
        "data_dir": data_dir,
        # Never above the largest size written: a smaller one is resized from it, a larger one
        # would not exist.
        "image_size": min(max(report.sizes), EXPERIMENT_IMAGE_SIZE),
        "batch_size_per_replica": EXPERIMENT_BATCH_SIZE,
        "shuffle_buffer": max(1, min(MAX_SHUFFLE_BUFFER, report.counts["train"])),
    }


# --------------------------------------------------------------------------- checks


def _check_args(
    sizes: Sequence[int], val_fraction: float, test_fraction: float, shards: int, max_pixels: int, quality: int
) -> list[int]:
    if isinstance(sizes, (int, str)):
        sizes = [sizes]  # type: ignore[list-item]
    try:
        clean = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise DataError(f"sizes must be positive integers, got {list(sizes)!r}") from None
    if not clean or clean[0] <= 0:
        raise DataError(f"sizes must be positive integers, got {list(sizes)!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0 <= value < 1) or math.isnan(value):
            raise DataError(f"{name} must be in [0, 1), got {value}")
    if val_fraction <= 0:
        raise DataError(f"val_fraction must be > 0 (a validation split is required), got {val_fraction}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction must be < 1 (training needs images), got {val_fraction} + {test_fraction}")
    if shards < 1:
        raise DataError(f"shards must be >= 1, got {shards}")
    if max_pixels < 1:
        raise DataError(f"max_pixels must be >= 1, got {max_pixels}")
    if not 1 <= quality <= 100:
        raise DataError(f"quality must be in 1..100, got {quality}")
    return clean


def _check_paths(src: str, out: str, force: bool) -> tuple[Path, Path]:
    if "://" in str(out):
        raise DataError(f"{out}: import-folder writes a local folder; import locally, then copy it (e.g. gsutil -m cp -r)")
    src_path = Path(src).expanduser().resolve()
    out_path = Path(out).expanduser().resolve()
    if not src_path.is_dir():
        raise DataError(f"{src}: source folder does not exist (expected one subfolder of images per class)")
    if out_path == src_path or src_path in out_path.parents or out_path in src_path.parents:
        raise DataError(f"{out}: output folder must be outside the source folder {src_path} (and not contain it)")
    if out_path.exists():
        if not out_path.is_dir():
            raise DataError(f"{out}: exists and is not a folder; choose another --out")
        if any(out_path.iterdir()) and not force:
            raise DataError(f"{out}: output folder exists and is not empty; choose another --out or pass --force to replace it")
    return src_path, out_path


def _scan(src: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and ``(image path, label)`` in a deterministic order."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{src}: no class folders; expected one subfolder of .jpg/.jpeg/.png images per class")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(src / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in filenames:
                if not fname.startswith(".") and fname.lower().endswith(IMAGE_SUFFIXES):
                    found.append(os.path.join(dirpath, fname))
        if not found:
            raise DataError(f"{src / name}: class folder has no .jpg/.jpeg/.png images; add some or remove the folder")
        files.extend((path, label) for path in sorted(found))
    return classes, files


# --------------------------------------------------------------------------- decoding


def _process_all(
    paths: list[str],
    staging: str,
    sizes: list[int],
    max_pixels: int,
    quality: int,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[str, str | None]]:
    """``(digest, skip reason or None)`` per path, in order; JPEGs land in ``staging``."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    jobs = [(p, staging, tuple(sizes), max_pixels, quality) for p in paths]
    total = len(jobs)
    if workers <= 1 or total < _POOL_MIN_FILES:
        results: Iterable = map(_process_one, jobs)
        pool = None
    else:
        # Threads, not processes: Pillow releases the GIL while it decodes, resizes and
        # encodes, and threads need no re-importable __main__ (notebooks, stdin) nor fork
        # safety (the caller may already run TensorFlow). Results come back in order.
        pool = ThreadPoolExecutor(workers, thread_name_prefix="import")
        results = pool.map(_process_one, jobs)
    from PIL import Image

    # Oversized images are refused by our own max_pixels check; Pillow's warning about them is
    # noise. Filters are process-wide, so they are set once here, around the worker threads.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            for done, result in enumerate(results, 1):
                if progress is not None:
                    progress(done, total)
                yield result
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _staged(staging: str | Path, digest: str, size: int) -> Path:
    return Path(staging) / f"{digest}-{size}.jpg"


def _process_one(job: tuple[str, str, tuple[int, ...], int, int]) -> tuple[str, str | None]:
    path, staging, sizes, max_pixels, quality = job
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return "", f"cannot read ({exc.strerror or exc})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        encoded = encode_sizes(data, sizes, max_pixels, quality)
    except _Refused as exc:
        return digest, str(exc)
    for size, jpeg in encoded.items():
        target = _staged(staging, digest, size)
        part = target.with_name(f"{target.name}.{secrets.token_hex(6)}.part")  # same bytes twice: last rename wins
        part.write_bytes(jpeg)
        os.replace(part, target)
    return digest, None


class _Refused(Exception):
    pass


def decode_square(data: bytes, largest: int, max_pixels: int, formats: tuple[str, ...] | None = None) -> Any:
    """The center square of ``data`` as an RGB PIL image (decoded at reduced scale when the
    JPEG is much larger than ``largest``). The pixel count is checked from the header before
    any pixel is decoded (decompression bombs); any refusal is a one-line :class:`DataError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    with warnings.catch_warnings():
        # Our own max_pixels check refuses oversized images; Pillow's warning is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(
                    f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} (max_pixels)"
                )
            if formats is not None and img.format not in formats:
                raise DataError(f"not a {' or '.join(formats)} image ({img.format})")
            img.draft("RGB", (largest, largest))  # JPEG: decode at a reduced scale when large
            img.load()
            img = _to_rgb(ImageOps.exif_transpose(img))
        except DataError:
            raise
        except Image.DecompressionBombError as exc:
            raise DataError(f"refused as a decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise DataError("not an image (unrecognised format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise DataError(f"unreadable image ({type(exc).__name__}: {detail})") from None
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.crop((left, top, left + side, top + side))


def encode_sizes(data: bytes, sizes: Sequence[int], max_pixels: int, quality: int = 95) -> dict[int, bytes]:
    """Center-crop ``data`` (JPEG/PNG bytes) to a square, resize to each size, encode JPEG."""
    from PIL import Image

    try:
        square = decode_square(data, max(sizes), max_pixels, formats=("JPEG", "PNG"))
    except DataError as exc:
        raise _Refused(str(exc)) from None
    out = {}
    for size in sizes:
        resized = square.resize((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        resized.save(buf, "JPEG", quality=quality)
        out[size] = buf.getvalue()
    return out


def _to_rgb(img):
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


# --------------------------------------------------------------------------- ids and splits


def _dedupe(images: list[_Image], classes: list[str]) -> tuple[list[_Image], list[str]]:
    first: dict[str, _Image] = {}
    kept, duplicates = [], []
    for img in images:
        other = first.get(img.digest)
        if other is None:
            first[img.digest] = img
            kept.append(img)
            continue
        note = f"{img.path}: same bytes as {other.path}"
        if other.label != img.label:
            note += f" (classes {classes[other.label]!r} and {classes[img.label]!r}; kept in {classes[other.label]!r})"
        duplicates.append(note)
    return kept, duplicates


def assign_ids(digests: Iterable[str], length: int = records.ID_LENGTH) -> dict[str, str]:
    """Content ids: the first ``length`` hex digits of each digest.

    When two different digests share that prefix, both get the shortest longer prefix that
    tells them apart (deterministic: depends only on the set of digests).
    """
    unique = sorted(set(digests))
    groups: dict[str, list[str]] = {}
    for d in unique:
        groups.setdefault(d[:length], []).append(d)
    ids = {}
    for prefix, members in groups.items():
        if len(members) == 1:
            ids[members[0]] = prefix
            continue
        n = length
        while len({m[:n] for m in members}) < len(members):
            n += 1
        for m in members:
            ids[m] = m[:n]
    return ids


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(train, val, test)`` counts for a class of ``n`` images.

    Rounded fractions; a class of 3 or more images gets at least one image in every split
    whose fraction is > 0, and training always keeps at least one.
    """

    def rnd(x: float) -> int:
        return int(math.floor(x + 0.5))

    if n <= 0:
        return 0, 0, 0
    n_val = rnd(n * val_fraction)
    n_test = rnd(n * test_fraction) if test_fraction > 0 else 0
    if n >= 3:
        n_val = max(n_val, 1)
        if test_fraction > 0:
            n_test = max(n_test, 1)
    low_val = 1 if n >= 3 else 0
    low_test = 1 if (n >= 3 and test_fraction > 0) else 0
    while n - n_val - n_test < 1:
        if n_val >= n_test and n_val > low_val:
            n_val -= 1
        elif n_test > low_test:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def _split(per_class: list[list[_Image]], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[_Image]]:
    rng = random.Random(seed)
    out: dict[str, list[_Image]] = {"train": [], "val": [], "test": []}
    for members in per_class:
        members = sorted(members, key=lambda img: img.digest)  # content order: independent of file names
        rng.shuffle(members)
        n_train, n_val, n_test = split_counts(len(members), val_fraction, test_fraction)
        out["val"].extend(members[:n_val])
        out["test"].extend(members[n_val : n_val + n_test])
        out["train"].extend(members[n_val + n_test :])
    for name in out:
        rng.shuffle(out[name])
    return out


# --------------------------------------------------------------------------- output


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an old ``out`` (already allowed)."""
    if out.exists():
        if not any(out.iterdir()):
            out.rmdir()
        else:
            trash = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            trash.mkdir()
            os.replace(out, trash / out.name)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(trash / out.name, out)  # put the old data back
                raise
            shutil.rmtree(trash, ignore_errors=True)
            return
    os.replace(tmp, out)
