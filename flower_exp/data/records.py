"""The competition's TFRecord layout: discovery, counting, reading and writing.

Layout (what Kaggle's "Flower Classification with TPUs" ships, locally or on ``gs://``)::

    ROOT/tfrecords-jpeg-{S}x{S}/{train,val,test}/NN-{S}x{S}-COUNT.tfrec

Labeled records hold ``{image: JPEG bytes, class: int64, id: bytes}``; test records hold
``{image, id}``. Every path goes through ``tf.io.gfile`` so ``gs://`` (and any other
registered filesystem) works like a local folder.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .._imports import tensorflow
from ..errors import DataError

SPLITS = ("train", "val", "test")
LABELED_SPLITS = ("train", "val")
SIZE_DIR_RE = re.compile(r"^tfrecords-jpeg-(\d+)x(\d+)$")
SHARD_RE = re.compile(r"^(\d+)-(\d+)x(\d+)-(\d+)\.tfrec$")
ID_LENGTH = 9
CLASSES_FILE = "classes.txt"
TEST_LABELS_FILE = "test_labels.csv"


@dataclass(frozen=True)
class Record:
    """One decoded-from-protobuf record (the image stays JPEG bytes)."""

    image: bytes
    id: str
    label: int | None = None


def join(*parts: str) -> str:
    """Join path parts with ``/`` (works for local paths and URLs like ``gs://``)."""
    head, *rest = parts
    out = head.rstrip("/") if head not in ("/", "") else head
    for part in rest:
        out = f"{out.rstrip('/')}/{part.strip('/')}" if out else part
    return out


def size_dir(root: str, size: int) -> str:
    """Folder of the ``size``×``size`` shards under ``root``."""
    return join(root, f"tfrecords-jpeg-{size}x{size}")


def shard_name(index: int, size: int, count: int) -> str:
    """Competition shard file name, e.g. ``00-512x512-798.tfrec``."""
    return f"{index:02d}-{size}x{size}-{count}.tfrec"


def exists(path: str) -> bool:
    """Whether ``path`` exists (local or remote)."""
    tf = tensorflow()
    try:
        return bool(tf.io.gfile.exists(path))
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot access ({_short(exc)})") from exc


def available_sizes(root: str) -> list[int]:
    """Image sizes that have a ``tfrecords-jpeg-SxS`` folder under ``root``, ascending."""
    tf = tensorflow()
    if not exists(root):
        raise DataError(f"{root}: data directory does not exist")
    try:
        entries = tf.io.gfile.listdir(root)
    except tf.errors.OpError as exc:
        raise DataError(f"{root}: cannot list ({_short(exc)})") from exc
    sizes = []
    for entry in entries:
        match = SIZE_DIR_RE.match(entry.rstrip("/"))
        if match and match.group(1) == match.group(2):
            sizes.append(int(match.group(1)))
    return sorted(sizes)


def source_size(root: str, requested: int) -> int:
    """The stored size to read for ``requested`` pixels.

    The matching folder when it exists, else the nearest larger one (downscaling keeps
    detail). Upscaling from a smaller folder would silently train on blurry images, so it is
    refused.
    """
    if requested <= 0:
        raise DataError(f"image size must be positive, got {requested}")
    sizes = available_sizes(root)
    if not sizes:
        raise DataError(f"{root}: no tfrecords-jpeg-SxS folders (expected the competition layout)")
    if requested in sizes:
        return requested
    larger = [s for s in sizes if s > requested]
    if not larger:
        raise DataError(
            f"{root}: no shards at {requested}x{requested} or larger "
            f"(available: {', '.join(map(str, sizes))}); choose image_size <= {sizes[-1]}"
        )
    return larger[0]


def shard_files(root: str, size: int, split: str) -> list[str]:
    """Sorted shard paths of ``split`` at stored ``size``; raises if the split is missing."""
    tf = tensorflow()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    folder = join(size_dir(root, size), split)
    pattern = join(folder, "*.tfrec")
    try:
        files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as exc:
        raise DataError(f"{folder}: cannot list ({_short(exc)})") from exc
    if not files:
        raise DataError(f"{folder}: no .tfrec shards (split {split!r} missing)")
    return files


def count_from_name(path: str) -> int:
    """Record count encoded in a shard's file name, as the competition notebooks read it."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    match = SHARD_RE.match(name)
    if not match:
        raise DataError(f"{path}: shard name does not match NN-SxS-COUNT.tfrec")
    return int(match.group(4))


def count_records(files: Iterable[str]) -> int:
    """Total records of ``files`` from their names (no reading)."""
    return sum(count_from_name(f) for f in files)


def feature_spec(labeled: bool) -> dict:
    """``parse_single_example`` feature spec of the competition schema."""
    tf = tensorflow()
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "id": tf.io.FixedLenFeature([], tf.string),
    }
    if labeled:
        spec["class"] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def encode_example(image: bytes, record_id: str, label: int | None) -> bytes:
    """Serialise one record in the competition schema (``label=None`` for test records)."""
    tf = tensorflow()
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record_id.encode()])),
    }
    if label is not None:
        feature["class"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_split(root: str, size: int, split: str, records: list[Record], shards: int) -> list[str]:
    """Write ``records`` as ``shards`` competition shards (contiguous, order kept).

    Test records are written without ``class`` whatever their label says: the competition's
    test split is unlabeled (labels for scoring go to a separate CSV).
    """
    tf = tensorflow()
    folder = join(size_dir(root, size), split)
    tf.io.gfile.makedirs(folder)
    shards = max(1, min(shards, len(records)))
    bounds = [round(i * len(records) / shards) for i in range(shards + 1)]
    paths = []
    for index in range(shards):
        chunk = records[bounds[index] : bounds[index + 1]]
        path = join(folder, shard_name(index, size, len(chunk)))
        with tf.io.TFRecordWriter(path) as writer:
            for rec in chunk:
                label = None if split == "test" else rec.label
                writer.write(encode_example(rec.image, rec.id, label))
        paths.append(path)
    return paths


def iter_shard(path: str, skip_corrupt: bool = False, errors: list[str] | None = None) -> Iterator[tuple[int, Record]]:
    """Yield ``(index, Record)`` for each record of one shard, validating as it goes.

    A truncated/corrupt shard, a record missing ``image`` or ``id``, or an image that is not
    a JPEG raises :class:`DataError` naming the file and record index. With ``skip_corrupt``
    the problem is appended to ``errors`` instead and the record (or, for a truncated file,
    the rest of the shard, which cannot be framed any more) is skipped.
    """
    tf = tensorflow()

    def fail(message: str) -> None:
        if not skip_corrupt:
            raise DataError(message)
        if errors is not None:
            errors.append(message)

    index = -1
    try:
        raw_iter = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
        while True:
            index += 1
            try:
                raw = next(raw_iter)
            except StopIteration:
                return
            record, problem = _decode_record(raw)
            if problem:
                fail(f"{path}: record {index}: {problem}")
                continue
            yield index, record
    except tf.errors.OpError as exc:
        fail(f"{path}: record {index}: corrupt or truncated shard ({_short(exc)})")


def _decode_record(raw: bytes) -> tuple[Record | None, str | None]:
    tf = tensorflow()
    try:
        example = tf.train.Example.FromString(raw)
    except Exception as exc:  # protobuf raises DecodeError, whose import path varies
        return None, f"not a tf.train.Example ({exc})"
    feats = example.features.feature
    missing = [k for k in ("image", "id") if k not in feats or not feats[k].bytes_list.value]
    if missing:
        return None, f"missing key(s) {', '.join(missing)}; expected image (JPEG bytes), id (bytes), class (int64)"
    image = feats["image"].bytes_list.value[0]
    if not image.startswith(b"\xff\xd8\xff"):
        return None, "image is not JPEG data"
    label = None
    if "class" in feats:
        values = feats["class"].int64_list.value
        if not values:
            return None, "class is not an int64"
        label = int(values[0])
    return Record(image=image, id=feats["id"].bytes_list.value[0].decode("utf-8", "replace"), label=label), None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a JPEG's header, or None when Pillow finds no image header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def read_classes_file(path: str) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    tf = tensorflow()
    try:
        with tf.io.gfile.GFile(path, "r") as fh:
            names = [line.strip() for line in fh.read().splitlines() if line.strip()]
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot read class names ({_short(exc)})") from exc
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def write_text(path: str, text: str) -> None:
    """Write a small text file through gfile."""
    tf = tensorflow()
    with tf.io.gfile.GFile(path, "w") as fh:
        fh.write(text)


def _short(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    # TensorFlow prefixes iterator errors with "{{function_node __wrapped__...}}".
    message = re.sub(r"^\{\{[^}]*\}\}\s*", "", message.strip())
    return message.splitlines()[0][:200] if message else type(exc).__name__
