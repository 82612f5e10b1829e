"""Predict with a loaded export: image files, http(s) URLs, arrays, or the competition test split.

Exports are loaded by :func:`flower_exp.export_format.load_export` (the format and its safe
loading live there) and URLs fetched by :func:`flower_exp.fetch.fetch_image`.

Every member sees the image the way it was trained: center-cropped square, resized to its own
``image_size``, scaled by its own normalization. The ensemble's answer is the weighted average
of the members' softmax outputs; TTA averages each image with its left-right flip.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._imports import tensorflow
from .data.importer import decode_square
from .errors import DataError, FlowerExpError
from .export_format import LoadedEnsemble
from .fetch import MAX_BYTES, MAX_PIXELS, URL_SCHEMES, fetch_image

_PREDICT_CHUNK = 64  # sources decoded and predicted together (bounds memory for long lists)


# --------------------------------------------------------------------------- arrays


def predict_arrays(
    ens: LoadedEnsemble, images_by_size: dict[int, np.ndarray], *, tta: bool = False, batch_size: int = 32
) -> np.ndarray:
    """Weighted average of the members' probabilities, ``float32 [N, C]``.

    ``images_by_size[S]``: ``[N, S, S, 3]`` pixels in 0..255 (uint8 or float) for every member
    image size ``S``; each member normalizes them its own way. ``tta`` averages each image
    with its left-right flip.
    """
    counts = {len(images_by_size[s]) for s in ens.image_sizes if s in images_by_size}
    missing = [s for s in ens.image_sizes if s not in images_by_size]
    if missing:
        raise ValueError(f"images_by_size lacks image size(s) {missing} (members need {ens.image_sizes})")
    if len(counts) != 1:
        raise ValueError(f"images_by_size holds different image counts per size: {sorted(counts)}")
    n = counts.pop()
    total = np.zeros((n, len(ens.class_names)), np.float64)
    for member in ens.members:
        if member.weight == 0:
            continue
        x = images_by_size[member.image_size]
        for start in range(0, n, batch_size):
            total[start : start + batch_size] += member.weight * member.probabilities(x[start : start + batch_size], tta)
    return total.astype(np.float32)


# --------------------------------------------------------------------------- images


def load_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes → ``uint8 [size, size, 3]`` RGB: center-cropped square, LANCZOS-resized.

    The same recipe as ``flower-exp data import-folder``. The pixel count is checked from the
    header before anything is decoded; anything Pillow cannot read is a :class:`FlowerExpError`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise FlowerExpError(f"image size must be a positive integer, got {size!r}")
    return _resize(decode_square(data, size, max_pixels), size)


def _resize(square: Any, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


# --------------------------------------------------------------------------- sources


@dataclass
class ItemPrediction:
    """The prediction for one file or URL: ``top`` classes with probabilities, or ``error``."""

    source: str
    error: str | None
    top: list[tuple[str, float]]
    probabilities: list[float] | None = None  # every class, in class order (None on error)


def predict_sources(
    ens: LoadedEnsemble,
    sources: list[str],
    *,
    top: int = 5,
    tta: bool = False,
    fetch: Callable[[str], bytes] = fetch_image,
) -> list[ItemPrediction]:
    """Predict image files and http(s) URLs, one :class:`ItemPrediction` each, in order.

    A source that cannot be read, fetched or decoded gets an ``error``; the others still predict.
    """
    if top < 1:
        raise FlowerExpError(f"top must be >= 1, got {top}")
    results: list[ItemPrediction] = []
    for start in range(0, len(sources), _PREDICT_CHUNK):
        chunk = sources[start : start + _PREDICT_CHUNK]
        payloads: list[bytes | str] = []
        for source in chunk:
            try:
                payloads.append(read_source(source, fetch))
            except FlowerExpError as exc:
                payloads.append(_without_prefix(str(exc), source))
        results.extend(predict_payloads(ens, chunk, payloads, top=top, tta=tta))
    return results


def read_source(source: str, fetch: Callable[[str], bytes] = fetch_image, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a local file (at most ``max_bytes``, like a download) or an http(s) URL
    (other URL schemes are refused)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", source)
    if match:
        if match.group(1).lower() not in URL_SCHEMES:
            raise FlowerExpError(f"{source}: unsupported URL scheme {match.group(1)}:// (http/https only)")
        return fetch(source)
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        raise FlowerExpError(f"{source}: no such file")
    if not os.path.isfile(path):
        raise FlowerExpError(f"{source}: not a file")
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise FlowerExpError(f"{source}: {size} bytes is above the limit of {max_bytes} bytes; not read")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since the stat
    except OSError as exc:
        raise FlowerExpError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise FlowerExpError(f"{source}: more than the limit of {max_bytes} bytes; not read")
    return data


def read_image(source: str, fetch: Callable[[str], bytes] = fetch_image, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of one image file or http(s) URL, checked to decode as an image (pixel count
    first); anything else is a one-line :class:`FlowerExpError` naming ``source``."""
    data = read_source(source, fetch)
    try:
        decode_square(data, 1, max_pixels)  # size 1: JPEGs decode at reduced scale, cheaply
    except DataError as exc:
        raise FlowerExpError(f"{source}: {exc}") from None
    return data


def predict_payloads(
    ens: LoadedEnsemble,
    names: Sequence[str],
    payloads: Sequence[bytes | str],
    *,
    top: int = 5,
    tta: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> list[ItemPrediction]:
    """Predict image bytes; a ``str`` payload is an error already (kept as the item's error)."""
    sizes = ens.image_sizes
    errors: list[str | None] = []
    pixels: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    for payload in payloads:
        if isinstance(payload, str):
            errors.append(payload)
            continue
        try:
            square = decode_square(payload, max(sizes), max_pixels)
            resized = {s: _resize(square, s) for s in sizes}
        except FlowerExpError as exc:
            errors.append(str(exc))
            continue
        errors.append(None)
        for s in sizes:
            pixels[s].append(resized[s])
    row_of = {item: row for row, item in enumerate(i for i, e in enumerate(errors) if e is None)}
    probs = predict_arrays(ens, {s: np.stack(v) for s, v in pixels.items()}, tta=tta) if row_of else None
    out = []
    k = min(top, len(ens.class_names))
    for i, (name, error) in enumerate(zip(names, errors)):
        if error is not None:
            out.append(ItemPrediction(source=name, error=error, top=[]))
            continue
        p = probs[row_of[i]]
        order = np.argsort(-p, kind="stable")[:k]
        out.append(
            ItemPrediction(
                source=name,
                error=None,
                top=[(ens.class_names[c], float(p[c])) for c in order],
                probabilities=[float(v) for v in p],
            )
        )
    return out


def _without_prefix(message: str, source: str) -> str:
    # Errors name their source for standalone use; an ItemPrediction already carries it.
    prefix = f"{source}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


# --------------------------------------------------------------------------- test split


def predict_test(
    ens: LoadedEnsemble,
    data_root: str,
    out_csv: str,
    *,
    batch_size: int = 64,
    tta: bool = False,
    labels_csv: str | None = None,
) -> tuple[str, float | None]:
    """Predict the competition test split and write ``out_csv`` (``id,label``, the sample
    submission's format: one row per test record in stored order, label = class index).

    Each member reads the split at its own image size and normalization; predictions are
    aligned by id. With ``labels_csv`` (default ``<data_root>/test_labels.csv`` when present)
    also returns the macro-F1 against it, else ``None``. The CSV is replaced atomically.
    """
    from .data import pipeline, records
    from .ensemble import macro_f1

    if batch_size < 1:
        raise FlowerExpError(f"batch size must be >= 1, got {batch_size}")
    ids: list[str] | None = None
    total: np.ndarray | None = None
    for member in ens.members:
        ds = pipeline.make_dataset(
            data_root, "test", image_size=member.image_size, batch_size=batch_size, normalization=member.normalization
        )
        member_ids: list[str] = []
        parts = []
        with pipeline.shard_errors_named(pipeline.split_files(data_root, "test", member.image_size)):
            for images, batch_ids in ds:
                member_ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
                parts.append(member.predict_normalized(images, tta))
        probs = np.concatenate(parts) if parts else np.zeros((0, len(ens.class_names)))
        if ids is None:
            ids, total = member_ids, np.zeros_like(probs)
        elif member_ids != ids:
            raise DataError(
                f"{data_root}: the test split holds different ids at {member.image_size}px than at "
                f"{ens.members[0].image_size}px; the size folders must hold the same records in the same order"
            )
        total += member.weight * probs
    assert ids is not None and total is not None
    predicted = total.argmax(axis=1)
    written = _write_submission(out_csv, ids, predicted)

    if labels_csv is None:
        default = records.join(data_root, records.TEST_LABELS_FILE)
        labels_csv = default if records.exists(default) else None
    if labels_csv is None:
        return written, None
    labels = read_labels(labels_csv, len(ens.class_names))
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(f"{labels_csv}: no label for {len(missing)} test id(s), e.g. {missing[0]}; is it this dataset's file?")
    truth = np.array([labels[i] for i in ids], np.int64)
    return written, macro_f1(total, truth, len(ens.class_names))


def read_labels(path: str, num_classes: int) -> dict[str, int]:
    """An ``id,label`` CSV → ``{id: label}``; malformed rows are one-line errors."""
    tf = tensorflow()
    try:
        with tf.io.gfile.GFile(path, "r") as fh:
            text = fh.read()
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot read labels ({exc.message.splitlines()[0] if exc.message else exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["id", "label"]:
        raise DataError(f"{path}: expected a header line 'id,label'")
    labels: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
            raise DataError(f"{path}: line {line}: expected 'id,label' with an integer label, got {','.join(row)!r}")
        label = int(row[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{path}: line {line}: label {label} is outside 0..{num_classes - 1}")
        labels[row[0].strip()] = label
    return labels


def _write_submission(out_csv: str, ids: list[str], predicted: np.ndarray) -> str:
    """Write ``id,label`` rows to ``out_csv`` through a temp file and a rename."""
    out = os.path.abspath(os.path.expanduser(out_csv))
    if os.path.isdir(out):
        raise FlowerExpError(f"{out_csv}: is a folder; give a file name such as submission.csv")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise FlowerExpError(f"{out_csv}: cannot create folder {parent} ({exc.strerror})") from None
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write("id,label\n")
            fh.writelines(f"{i},{int(p)}\n" for i, p in zip(ids, predicted))
        os.replace(tmp, out)
    except OSError as exc:
        raise FlowerExpError(f"{out_csv}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
