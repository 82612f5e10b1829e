"""A deterministic synthetic flower dataset in the exact competition layout.

The demo experiment must run anywhere without downloading anything, yet exercise the same
code paths as the real "Flower Classification with TPUs" data. So flower-exp draws flowers
with numpy/Pillow and writes them exactly like the competition ships its data::

    OUT/tfrecords-jpeg-{S}x{S}/{train,val,test}/NN-{S}x{S}-COUNT.tfrec
    OUT/classes.txt        one class name per line, in label order
    OUT/test_labels.csv    id,label for the (unlabeled) test split, in test-split order
    OUT/demo.json          the recipe, so a later run can tell whether the data is current

The images themselves (the species of each class, drawing, JPEG encoding) come from
:mod:`flower_exp.data.demo_images`; this module plans the dataset and writes it out.

Same arguments give byte-identical files (with the same numpy and Pillow builds): every random
draw comes from a ``numpy.random.default_rng`` seeded by (seed, purpose, ...), JPEG quality is
fixed and nothing depends on time, host or the number of worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .records import (
    CLASSES_FILE,
    SPLITS,
    TEST_LABELS_FILE,
    Record,
    count_from_name,
    exists,
    join,
    read_classes_file,
    shard_files,
    write_split,
    write_text,
)
from .demo_images import MAX_CLASSES, STREAM_ID, STREAM_ORDER, STREAM_SPLIT, class_names, encode

FORMAT_VERSION = 1
RECIPE_FILE = "demo.json"
MIN_PER_CLASS = 5  # smallest count that still puts every class into train, val and test
# Pillow draws polygons without anti-aliasing; drawing small sizes on a larger canvas and
# downscaling gives the smooth edges real (downscaled) photos have.
MIN_CANVAS = 128
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
# Below this many canvas-pixel-images a process pool costs more to start than it saves.
_POOL_THRESHOLD = 2500 * 128 * 128
_MAX_WORKERS = 8


@dataclass(frozen=True)
class DemoInfo:
    """Summary of a generated dataset: where, which classes and sizes, records per split."""

    root: str
    classes: list[str]
    sizes: list[int]
    counts: dict[str, int]


# --------------------------------------------------------------------------- recipe & plan


def _as_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"demo {name} must be an integer, got {value!r}")
    return int(value)


def _recipe(classes, per_class, sizes, seed, shards) -> dict:
    """Validated, normalised recipe (what demo.json stores and ensure_demo compares)."""
    classes = _as_int("classes", classes)
    if not 2 <= classes <= MAX_CLASSES:
        raise DataError(f"demo classes must be between 2 and {MAX_CLASSES}, got {classes}")
    per_class = _as_int("per_class", per_class)
    if per_class < MIN_PER_CLASS:
        raise DataError(
            f"demo per_class must be at least {MIN_PER_CLASS} (so train, val and test each get every class), got {per_class}"
        )
    if isinstance(sizes, (int, str)) or not sizes:
        raise DataError(f"demo sizes must be a non-empty list of positive integers, got {sizes!r}")
    size_list = sorted({_as_int("size", s) for s in sizes})
    if size_list[0] <= 0:
        raise DataError(f"demo sizes must be positive, got {size_list[0]}")
    shards = _as_int("shards", shards)
    if shards < 1:
        raise DataError(f"demo shards must be at least 1, got {shards}")
    seed = _as_int("seed", seed)
    return {
        "format_version": FORMAT_VERSION,
        "classes": classes,
        "per_class": per_class,
        "sizes": size_list,
        "seed": seed,
        "shards": shards,
    }


def _split_sizes(per_class: int) -> dict[str, int]:
    val = max(1, round(per_class * VAL_FRACTION))
    test = max(1, round(per_class * TEST_FRACTION))
    return {"train": per_class - val - test, "val": val, "test": test}


def _plan(recipe: dict) -> dict[str, list[tuple[int, int, str]]]:
    """``split -> [(label, image index, id), ...]`` in file order."""
    seed = recipe["seed"] % 2**64  # SeedSequence wants non-negative entropy
    classes, per_class = recipe["classes"], recipe["per_class"]
    total = classes * per_class

    id_rng = np.random.default_rng([seed, STREAM_ID])
    ids: dict[str, None] = {}  # insertion-ordered set
    while len(ids) < total:
        for value in id_rng.integers(0, 16**9, size=total - len(ids)).tolist():
            ids.setdefault(f"{value:09x}", None)
    id_list = list(ids)[:total]

    split_rng = np.random.default_rng([seed, STREAM_SPLIT])
    counts = _split_sizes(per_class)
    plan: dict[str, list[tuple[int, int, str]]] = {split: [] for split in SPLITS}
    for label in range(classes):
        order = split_rng.permutation(per_class).tolist()
        start = 0
        for split in SPLITS:
            for index in order[start : start + counts[split]]:
                plan[split].append((label, index, id_list[label * per_class + index]))
            start += counts[split]
    order_rng = np.random.default_rng([seed, STREAM_ORDER])
    return {split: [items[i] for i in order_rng.permutation(len(items)).tolist()] for split, items in plan.items()}


def _pool(recipe: dict, canvas: int) -> ProcessPoolExecutor | None:
    """A process pool when the job is big enough to repay starting one, else None."""
    if recipe["classes"] * recipe["per_class"] * canvas * canvas * len(recipe["sizes"]) < _POOL_THRESHOLD:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cpus, _MAX_WORKERS)
    if workers < 2:
        return None
    import multiprocessing

    # spawn, not fork: the parent may hold TensorFlow's threads, which fork does not survive.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _render_all(jobs: list[tuple], pool: ProcessPoolExecutor | None) -> list[dict[int, bytes]]:
    if pool is not None:
        try:
            # Chunks amortise inter-process overhead; small enough that workers finish together.
            return list(pool.map(encode, jobs, chunksize=16))
        except BrokenProcessPool:
            # Spawned workers die at start-up when they cannot re-import __main__ (a script
            # read from stdin, an unguarded script). Images do not depend on where they are
            # drawn, so drawing them here gives the same bytes, only slower.
            pass
    return [encode(job) for job in jobs]


def _write_dataset(root: str, recipe: dict) -> DemoInfo:
    """Write the whole dataset under ``root`` (a fresh folder); demo.json goes last."""
    names = class_names(recipe["classes"])
    sizes = recipe["sizes"]
    canvas = max(sizes[-1], MIN_CANVAS)
    seed = recipe["seed"] % 2**64
    plan = _plan(recipe)
    pool = _pool(recipe, canvas)
    try:
        # One split at a time bounds memory to one split's JPEGs (all sizes).
        for split in SPLITS:
            items = plan[split]
            images = _render_all([(seed, label, index, canvas, tuple(sizes)) for label, index, _ in items], pool)
            for size in sizes:
                records = [Record(image=img[size], id=rid, label=label) for (label, _, rid), img in zip(items, images)]
                write_split(root, size, split, records, recipe["shards"])
            del images
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    write_text(join(root, CLASSES_FILE), "".join(f"{name}\n" for name in names))
    test_rows = "".join(f"{rid},{label}\n" for label, _, rid in plan["test"])
    write_text(join(root, TEST_LABELS_FILE), "id,label\n" + test_rows)
    counts = {split: len(items) for split, items in plan.items()}
    write_text(join(root, RECIPE_FILE), json.dumps({**recipe, "counts": counts}, indent=2) + "\n")
    return DemoInfo(root=root, classes=names, sizes=list(sizes), counts=counts)


# --------------------------------------------------------------------------- filesystem


def _local_path(path: str) -> str | None:
    """The OS path of ``path`` when it is local, else None (a URL handled by tf.io.gfile)."""
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path else path


def _gfile():
    from .._imports import tensorflow

    return tensorflow().io.gfile


def _is_nonempty(path: str) -> bool:
    local = _local_path(path)
    if local is not None:
        if os.path.isfile(local):
            raise DataError(f"{path}: is a file, not a folder; choose another --out")
        return os.path.isdir(local) and bool(os.listdir(local))
    gfile = _gfile()
    return bool(gfile.exists(path) and gfile.isdir(path) and gfile.listdir(path))


def _parent_and_name(path: str) -> tuple[str, str]:
    stripped = path.rstrip("/")
    if "/" not in stripped.split("://", 1)[-1]:
        if "://" in stripped:
            raise DataError(f"{path}: a bucket root cannot be replaced atomically; use a folder inside it")
        return ".", stripped
    parent, name = stripped.rsplit("/", 1)
    return parent or "/", name


def _temp_dir(out: str) -> str:
    parent, name = _parent_and_name(out)
    # Same parent so the final rename stays on one filesystem (atomic locally).
    tmp = join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    local = _local_path(tmp)
    try:
        if local is not None:
            os.makedirs(local)
        else:
            _gfile().makedirs(tmp)
    except Exception as exc:  # OSError locally, tf.errors.OpError remotely
        raise DataError(f"{out}: cannot create a folder next to it ({exc}); choose a writable --out") from exc
    return tmp


def _remove_tree(path: str) -> None:
    local = _local_path(path)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    gfile = _gfile()
    if gfile.exists(path):
        gfile.rmtree(path)


class _TargetExists(DataError):
    """Raised by :func:`_publish` when another writer filled ``out`` first."""


def _exists_message(out: str) -> str:
    return f"{out}: already exists and is not empty; delete it or run `flower-exp data demo --out {out} --force`"


def _publish(tmp: str, out: str, force: bool) -> None:
    """Move the finished ``tmp`` folder to ``out``."""
    local_tmp, local_out = _local_path(tmp), _local_path(out)
    if local_tmp is not None and local_out is not None:
        trash = None
        if force and _is_nonempty(out):
            trash = f"{local_tmp}.old"
            os.rename(local_out, trash)
        try:
            os.rename(local_tmp, local_out)  # atomic; replaces only an empty folder
        except OSError as exc:
            if trash is not None:
                os.rename(trash, local_out)
            raise _TargetExists(_exists_message(out)) from exc
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return

    # Object stores have no atomic folder rename: move file by file and demo.json last, so
    # a half-moved folder is never taken for a finished dataset (ensure_demo checks demo.json).
    gfile = _gfile()
    if _is_nonempty(out):
        if not force:
            raise _TargetExists(_exists_message(out))
        gfile.rmtree(out)
    files = [join(folder, name) for folder, _, names in gfile.walk(tmp) for name in names]
    marker = join(tmp, RECIPE_FILE)
    for src in sorted(files, key=lambda f: f == marker):
        dst = join(out, src[len(tmp) :])
        gfile.makedirs(dst.rsplit("/", 1)[0])
        gfile.rename(src, dst, overwrite=True)


# --------------------------------------------------------------------------- public API


def generate_demo(
    out: str,
    *,
    classes: int = 6,
    per_class: int = 60,
    sizes: Sequence[int] = (32, 64),
    seed: int = 0,
    shards: int = 4,
    force: bool = False,
) -> DemoInfo:
    """Generate the synthetic dataset into ``out`` (local folder or tf.io.gfile URL).

    ``per_class`` images of each of ``classes`` species are split ~60/20/20 into
    train/val/test per class and written at every size in ``sizes`` (the same images and ids
    at each size, drawn once and downscaled), ``shards`` shards per split. The data is built in
    a temporary folder next to ``out`` and moved into place when complete. An existing
    non-empty ``out`` is refused unless ``force``.
    """
    recipe = _recipe(classes, per_class, sizes, seed, shards)
    if _is_nonempty(out) and not force:
        raise _TargetExists(_exists_message(out))
    tmp = _temp_dir(out)
    try:
        info = _write_dataset(tmp, recipe)
        _publish(tmp, out, force)
    finally:
        _remove_tree(tmp)
    return DemoInfo(root=out, classes=info.classes, sizes=info.sizes, counts=info.counts)


def _existing(out: str, recipe: dict) -> DemoInfo:
    """Info of the finished demo dataset in ``out``; DataError if it is another recipe or damaged."""
    fix = f"delete the folder or run `flower-exp data demo --out {out} --force`"
    marker = join(out, RECIPE_FILE)
    if not exists(marker):
        raise DataError(f"{out}: exists but is not a generated demo dataset (no {RECIPE_FILE}); {fix}")
    gfile = _gfile()
    try:
        with gfile.GFile(marker, "r") as fh:
            stored = json.loads(fh.read())
    except (ValueError, OSError) as exc:
        raise DataError(f"{marker}: unreadable demo recipe ({exc}); {fix}") from exc
    if not isinstance(stored, dict):
        raise DataError(f"{marker}: unreadable demo recipe (not a JSON object); {fix}")
    diff = [f"{key} {stored.get(key)!r} != {value!r}" for key, value in recipe.items() if stored.get(key) != value]
    if diff:
        raise DataError(f"{out}: holds a demo dataset with a different recipe ({'; '.join(diff)}); {fix}")

    expected = _split_sizes(recipe["per_class"])
    counts = {split: expected[split] * recipe["classes"] for split in SPLITS}
    for size in recipe["sizes"]:
        for split in SPLITS:
            try:
                found = sum(count_from_name(f) for f in shard_files(out, size, split))
            except DataError as exc:
                raise DataError(f"incomplete demo dataset: {exc}; {fix}") from exc
            if found != counts[split]:
                raise DataError(
                    f"{out}: incomplete demo dataset: {split} split at {size}x{size} has {found} records, "
                    f"expected {counts[split]}; {fix}"
                )
    names = read_classes_file(join(out, CLASSES_FILE))
    return DemoInfo(root=out, classes=names, sizes=list(recipe["sizes"]), counts=counts)


def ensure_demo(
    out: str,
    *,
    classes: int = 6,
    per_class: int = 60,
    sizes: Sequence[int] = (32, 64),
    seed: int = 0,
    shards: int = 4,
) -> tuple[DemoInfo, bool]:
    """Make sure ``out`` holds the demo dataset of this recipe; returns ``(info, created)``.

    An existing dataset of the same recipe is returned untouched (``created=False``); one of a
    different recipe (or any other non-empty folder) raises :class:`DataError` saying how to
    replace it. Safe when several workers call it at once: the loser of the race discards its
    copy and returns the winner's.
    """
    recipe = _recipe(classes, per_class, sizes, seed, shards)
    if _is_nonempty(out):
        return _existing(out, recipe), False
    try:
        info = generate_demo(out, classes=classes, per_class=per_class, sizes=sizes, seed=seed, shards=shards)
    except _TargetExists:
        return _existing(out, recipe), False
    return info, True
