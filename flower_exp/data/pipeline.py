"""tf.data pipelines over the competition TFRecords: train / val / test / train+val.

The recipe is the one the TPU notebooks proved (``TFRecordDataset(num_parallel_reads=AUTOTUNE)``,
non-deterministic order for training, parallel ``map``, repeat → shuffle → batch → prefetch,
validation batched and cached), with three changes that keep memory and CPU time down:

* images travel as ``uint8`` until the last step (4x smaller in shuffle buffers and caches
  than ``float32``; at 512 px the validation cache is 2.9 GB instead of 11.7 GB);
* training shuffles the *serialized* records (a few KB each) and decodes after the shuffle,
  so the shuffle buffer does not hold thousands of decoded images;
* augmentation and normalisation run once per batch, vectorised, not once per image.

Element structure: train / train+val / val yield ``(image, label)`` or, with ``with_ids``,
``(image, label, id)``; test yields ``(image, id)``. Images are ``float32 [B, S, S, 3]`` in the
requested normalisation (``uint8`` with ``none``: a model that augments and normalises on the
accelerator, see :mod:`flower_exp.device_preprocessing`), labels ``int32``, ids ``string``.

With ``cache`` on, decoded images are kept in memory once per process and shared by every
dataset later built over the same shards and image size (a sweep worker decodes each split
once, not once per trial). All such caches together stay under :func:`cache_budget`
(a quarter of physical memory unless :func:`set_cache_budget` says otherwise); a split that
does not fit is simply read uncached, and the least recently used caches make room for new
ones. :func:`clear_cache` drops them (e.g. after rewriting shards in place).

Finite datasets know their length (``len(ds)`` is the number of batches) from the counts
in the shard names; shards holding fewer or more records than their names say fail
iteration with ``tf.errors.FailedPreconditionError`` ("Input dataset was expected to contain
N elements but contained only M elements", or "at least M").

Records are decoded at their folder's size; only a split with a source stored at another
size (the nearest larger folder, an extra source) resizes, image by image. Where no source
needs resizing, an image of another size than its folder says fails iteration with
``tf.errors.InvalidArgumentError`` (:func:`shard_errors_named` turns it into a
:class:`DataError` naming the shard, the record and its size).

Labels are checked against ``num_classes`` when it is given: a record whose label is outside
``[0, num_classes)`` stops iteration with ``tf.errors.InvalidArgumentError`` whose message
contains ``label L of record ID is outside [0, N)`` (checking up front would mean reading every
shard before training, which on ``gs://`` costs minutes).
"""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._imports import tensorflow
from ..errors import DataError
from . import records

if TYPE_CHECKING:  # pragma: no cover - typing only; TensorFlow is imported lazily
    import tensorflow as tf

    from ..config import AugmentConfig

NORMALIZATIONS = ("raw", "unit", "tf", "torch", "none")
RESAMPLERS = ("crop_and_resize", "matmul")
SPLITS = ("train", "val", "test", "train+val")
TRAINING_SPLITS = ("train", "train+val")
EXTRA_SPLITS = ("train", "val")
# ImageNet statistics used by torchvision-style models (DenseNet, efficientnet package).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Share of physical memory the decoded-image caches of one process may hold (all together).
CACHE_MEMORY_FRACTION = 0.25

# Decoded-image caches shared by every dataset this process builds over the same shards:
# a sweep worker running many trials decodes each split once per image size, not once per
# trial. key -> (bytes, cached dataset), least recently used first.
_decoded_caches: OrderedDict[tuple, tuple[int, Any]] = OrderedDict()
_cache_budget: int | None = None


@dataclass(frozen=True)
class DataSource:
    """One dataset root in competition layout (e.g. an ``extra_data`` source).

    ``splits`` says which of its splits feed training (``train`` and/or ``val``).
    """

    root: str
    splits: tuple[str, ...] = ("train",)


@dataclass(frozen=True)
class SplitFiles:
    """The shards of one split and how many records they hold (counted from file names)."""

    split: str
    files: list[str]
    count: int
    stored_size: int  # folder size read from the main root (extra sources may differ)
    image_size: int  # the size the split is read at
    exact: bool  # every source is stored at image_size: records decode without resizing


# --------------------------------------------------------------------------- files


def split_files(root: str, split: str, image_size: int, extra: Sequence[DataSource] = ()) -> SplitFiles:
    """Shards of ``split`` under ``root`` for ``image_size`` pixels.

    ``train+val`` is the train shards followed by the val shards. Extra sources add their
    chosen splits to ``train`` and ``train+val`` only (validation and test stay the
    competition's), each read at its own stored size (:func:`records.source_size`): decoding
    resizes whatever does not match ``image_size``.
    """
    _check_split(split)
    stored = records.source_size(root, image_size)
    parts = ("train", "val") if split == "train+val" else (split,)
    files = [f for part in parts for f in records.shard_files(root, stored, part)]
    exact = stored == image_size
    if split in TRAINING_SPLITS:
        for source in extra:
            bad = [s for s in source.splits if s not in EXTRA_SPLITS]
            if bad:
                allowed = ", ".join(EXTRA_SPLITS)
                raise DataError(f"{source.root}: extra data split {bad[0]!r} cannot feed training; allowed: {allowed}")
            size = records.source_size(source.root, image_size)
            files += [f for part in source.splits for f in records.shard_files(source.root, size, part)]
            exact = exact and size == image_size
    return SplitFiles(
        split=split, files=files, count=records.count_records(files), stored_size=stored, image_size=image_size, exact=exact
    )


@contextmanager
def shard_errors_named(*splits: SplitFiles, num_classes: int | None = None) -> Iterator[None]:
    """Turn a TensorFlow read error of these splits into a :class:`DataError` naming the shard.

    tf.data's errors (truncated record, missing feature, fewer records than the name says, a
    label outside ``[0, num_classes)``) name no file. Only when one happens are the shards read
    again one by one (reading them all before training would cost minutes on ``gs://``); an
    error no shard explains is raised unchanged.
    """
    tf = tensorflow()
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as exc:
        found = find_bad_shard(
            [f for s in splits for f in s.files],
            labeled={f: s.split != "test" for s in splits for f in s.files},
            image_sizes={f: s.image_size for s in splits if s.exact for f in s.files},
            num_classes=num_classes,
        )
        if found is None:
            raise
        raise found from exc


def find_bad_shard(
    files: Sequence[str],
    labeled: dict[str, bool] | None = None,
    image_sizes: dict[str, int] | None = None,
    num_classes: int | None = None,
) -> DataError | None:
    """The first problem among ``files`` as a one-line :class:`DataError` naming the shard
    (corrupt or truncated, not the competition schema, a label outside ``[0, num_classes)``,
    an image of another size than ``image_sizes`` gives for its shard, fewer or more records
    than its name says), or None when every shard reads cleanly."""
    for path in files:
        read = 0
        size = (image_sizes or {}).get(path)
        try:
            for _index, record in records.iter_shard(path):
                if (labeled or {}).get(path, True) and record.label is None:
                    return DataError(f"{path}: record {read}: no class in a labeled split; expected class (int64)")
                if num_classes is not None and record.label is not None and not 0 <= record.label < num_classes:
                    return DataError(
                        f"{path}: record {read} ({record.id}): label {record.label} is outside [0, {num_classes}), "
                        f"the experiment's {num_classes} classes; check its classes / classes_file"
                    )
                if size is not None and (dims := records.jpeg_size(record.image)) != (size, size):
                    found = f"is {dims[0]}x{dims[1]}" if dims else "has no readable JPEG header"
                    return DataError(
                        f"{path}: record {read} ({record.id}): image {found}, not {size}x{size} like its folder; "
                        "rewrite the shard at the folder's size (flower-exp data inspect lists every odd image)"
                    )
                read += 1
        except DataError as exc:
            return DataError(f"{exc}; remove or replace the shard (flower-exp data inspect --skip-corrupt lists every problem)")
        expected = records.count_from_name(path)
        if read != expected:
            kind = "an empty file" if read == 0 else f"{read} records"
            return DataError(f"{path}: name says {expected} records but the shard holds {kind}; remove or rewrite it")
    return None


def steps_per_epoch(count: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass over ``count`` records (a partial last batch counts unless dropped)."""
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    steps = count // batch_size if drop_remainder else math.ceil(count / batch_size)
    if steps <= 0:
        raise DataError(
            f"{count} records make no {'full ' if drop_remainder else ''}batch of {batch_size}; "
            "use a smaller batch size or more data"
        )
    return steps


# --------------------------------------------------------------------------- image ops


def decode_image(jpeg: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG bytes → ``float32 [S, S, 3]`` in 0..255, resized only when the stored size differs.

    Resizing uses antialiased bilinear filtering (downscaling from the nearest larger
    folder without aliasing) and rounds back to whole levels, so an image decodes to the
    same pixels here as inside :func:`make_dataset`, which keeps ``uint8`` until the end.
    """
    tf = tensorflow()
    return tf.cast(_decode_uint8(jpeg, image_size), tf.float32)


def normalize(image: tf.Tensor, mode: str) -> tf.Tensor:
    """Scale 0..255 pixels (any dtype, any leading shape) to what a model family expects.

    ``raw``: float 0..255 (keras.applications EfficientNet rescales inside the model);
    ``unit``: 0..1; ``tf``: -1..1; ``torch``: 0..1 then ImageNet mean/std per channel;
    ``none``: unchanged (``uint8`` batches for a model that normalises on the accelerator).
    """
    tf = tensorflow()
    _check_normalization(mode)
    if mode == "none":
        return image
    x = tf.cast(image, tf.float32)
    if mode == "raw":
        return x
    if mode == "unit":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (x / 255.0 - mean) / std


def augment(image: tf.Tensor, cfg: AugmentConfig, seed: Any = None, resample: str = "crop_and_resize") -> tf.Tensor:
    """Randomly flip, crop-and-zoom, brighten and re-contrast one image or a batch.

    ``image``: ``[S, S, 3]`` or ``[B, S, S, 3]``, 0..255, any dtype; returns ``float32`` of the
    same shape clipped to 0..255. Each image of a batch draws its own parameters:

    * ``flip``: left-right with probability 1/2;
    * ``crop_scale`` < 1: a square of side ``U[crop_scale, 1] * S`` at a random position,
      resized back to ``S``;
    * ``brightness``: add ``U[-b, b] * 255``;
    * ``contrast``: scale each channel's deviation from its mean by ``U[1-c, 1+c]``.

    ``seed`` (an int or a shape-[2] integer tensor) makes the result a pure function of
    image and seed (stateless random ops); ``None`` draws fresh randomness on every call.
    ``cfg.enabled`` is the caller's switch: this function applies what ``cfg`` describes.

    ``resample`` picks the bilinear flip + crop-and-zoom kernel, same result either way:
    ``crop_and_resize`` (cheapest on a CPU, but no XLA kernel) or ``matmul`` (two batched
    matrix products with interpolation matrices: XLA compiles it, so it runs inside a
    TPU/GPU training step, where matrix products are nearly free).
    """
    tf = tensorflow()
    if resample not in RESAMPLERS:
        raise DataError(f"unknown resample {resample!r}; allowed: {', '.join(RESAMPLERS)}")
    x = image
    single = x.shape.rank == 3
    if single:
        x = x[tf.newaxis]
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    elif isinstance(seed, numbers.Integral):
        seed = tf.constant([int(seed), 0], tf.int64)
    seeds = tf.random.split(tf.cast(seed, tf.int64), 4)
    batch = tf.shape(x)[0]
    static_shape = x.shape

    def uniform(i: int, shape: Any, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, seeds[i], minval=low, maxval=high)

    if cfg.flip or cfg.crop_scale < 1.0:
        # Flip and crop in one resampling pass: a box whose x1 > x2 comes out mirrored.
        # Boxes are normalised [y1, x1, y2, x2]; side s, top-left offset in [0, 1 - s].
        side = uniform(0, [batch], cfg.crop_scale, 1.0) if cfg.crop_scale < 1.0 else tf.ones([batch])
        offset = uniform(1, [batch, 2]) * (1.0 - side)[:, None]
        y1, x1 = offset[:, 0], offset[:, 1]
        y2, x2 = y1 + side, x1 + side
        if cfg.flip:
            flip = uniform(2, [batch]) < 0.5
            x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
        if resample == "matmul":
            x = _resample_matmul(tf.cast(x, tf.float32), y1, x1, y2, x2)
        else:
            boxes = tf.stack([y1, x1, y2, x2], axis=1)
            x = tf.image.crop_and_resize(x, boxes, tf.range(batch), tf.shape(x)[1:3], method="bilinear")
        x.set_shape(static_shape)
    else:
        x = tf.cast(x, tf.float32)
    if cfg.brightness > 0 or cfg.contrast > 0:
        # Brightness then contrast, fused into one multiply-add per pixel:
        # ((x + d) - (m + d)) * f + (m + d) = x * f + (m * (1 - f) + d).
        delta = uniform(3, [batch, 1, 1, 2], -1.0, 1.0)
        d = delta[..., :1] * (cfg.brightness * 255.0)
        if cfg.contrast > 0:
            f = 1.0 + delta[..., 1:] * cfg.contrast
            m = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = x * f + (m * (1.0 - f) + d)
        else:
            x = x + d
    x = tf.clip_by_value(x, 0.0, 255.0)
    return x[0] if single else x


def _resample_matmul(x: tf.Tensor, y1: tf.Tensor, x1: tf.Tensor, y2: tf.Tensor, x2: tf.Tensor) -> tf.Tensor:
    """``crop_and_resize`` (bilinear, output size = input size) as ``Ry @ image @ Rx^T``.

    Row ``i`` of ``Ry`` holds the bilinear weights of output row ``i``: the "hat" function
    ``max(0, 1 - |src - k|)`` of its source coordinate ``src = y1·(H-1) + i·(y2-y1)·(H-1)/(H-1)``
    (crop_and_resize's sampling grid). Boxes stay inside the image, so no extrapolation.
    """
    tf = tensorflow()

    def weights(start: tf.Tensor, end: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
        last = tf.cast(n - 1, tf.float32)
        steps = tf.cast(tf.range(n), tf.float32) / tf.maximum(last, 1.0)
        source = (start[:, None] + steps[None, :] * (end - start)[:, None]) * last  # [B, n]
        grid = tf.cast(tf.range(n), tf.float32)
        return tf.nn.relu(1.0 - tf.abs(source[:, :, None] - grid[None, None, :]))  # [B, out, in]

    shape = tf.shape(x)
    rows = weights(y1, y2, shape[1])
    cols = weights(x1, x2, shape[2])
    x = tf.einsum("bik,bklc->bilc", rows, x)
    return tf.einsum("bjl,bilc->bijc", cols, x)


# --------------------------------------------------------------------------- datasets


def make_dataset(
    root: str,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    normalization: str = "unit",
    augment_cfg: AugmentConfig | None = None,
    extra: Sequence[DataSource] = (),
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    repeat: bool | None = None,
    drop_remainder: bool = False,
    cache: bool | None = None,
    with_ids: bool = False,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """A batched, prefetched ``tf.data.Dataset`` of one split.

    ``train`` / ``train+val``: shards and records shuffled (``seed``), read in parallel in
    non-deterministic order, augmented when ``augment_cfg.enabled``, repeated by default.
    ``val``: file then record order, never augmented or shuffled, decoded images cached in
    memory by default (``cache``), not repeated by default. ``test``: unlabeled, file then
    record order exactly as stored, yields ``(image, id)``. ``extra`` sources feed the
    training splits only. ``cache=True`` (default for ``val`` only) keeps the decoded ``uint8``
    images (``count * S * S * 3`` bytes) in a process-wide cache shared with later calls over
    the same shards and size, when the budget allows; see the module docstring for that,
    the element structure and the ``num_classes`` label check. ``with_ids`` does not apply
    to ``test`` (always has ids) and ``num_classes`` not to it either (no labels).
    """
    tf = tensorflow()
    _check_split(split)
    _check_normalization(normalization)
    if image_size <= 0:
        raise DataError(f"image size must be positive, got {image_size}")
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if shuffle_buffer < 0:
        raise DataError(f"shuffle buffer must be >= 0 (0 disables record shuffling), got {shuffle_buffer}")
    if num_classes is not None and num_classes <= 0:
        raise DataError(f"num_classes must be positive, got {num_classes}")

    training = split in TRAINING_SPLITS
    labeled = split != "test"
    repeat = training if repeat is None else repeat
    cache = split == "val" if cache is None else cache
    augmenting = training and augment_cfg is not None and augment_cfg.enabled
    found = split_files(root, split, image_size, extra if training else ())
    files = found.files
    # The map functions use no Python control flow on tensors; skipping AutoGraph saves
    # tracing time and the warnings it prints when it reaches the lazy-import helper.
    parse = tf.autograph.experimental.do_not_convert(_parse_fn(labeled, image_size, found.exact))
    autotune = tf.data.AUTOTUNE

    def read() -> tf.data.Dataset:
        if not training:
            # Sequential read: parallel reads would interleave shards, and val/test order
            # must be shard order then record order (ids line up with predictions).
            ds = tf.data.TFRecordDataset(files)
        else:
            # Shuffle shard order, read shards in parallel and take records as they arrive:
            # throughput matters more than order for training.
            file_ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
            options = tf.data.Options()
            options.deterministic = False
            ds = tf.data.TFRecordDataset(file_ds, num_parallel_reads=autotune).with_options(options)
        # The length from the shard names: Keras then knows the steps of a finite dataset
        # (progress bars, no "ran out of data" warning), and a shard holding fewer or more
        # records than its name says fails loudly instead of skewing every epoch.
        return ds.apply(tf.data.experimental.assert_cardinality(found.count))

    decoded = None
    if cache:
        key = (tuple(files), image_size, labeled, training)
        decoded = _shared_cache(
            key,
            found.count * image_size * image_size * 3,
            lambda: read().map(parse, num_parallel_calls=autotune, deterministic=not training).cache(),
        )
    if decoded is not None:
        ds = decoded.repeat() if repeat else decoded
        if training and shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed)
    elif training:
        # Shuffle serialized records (KBs each), then decode: a 2048-image buffer of
        # decoded 512 px images would hold 1.6 GB.
        ds = read().repeat() if repeat else read()
        ds = ds.shuffle(shuffle_buffer, seed=seed) if shuffle_buffer > 1 else ds
        ds = ds.map(parse, num_parallel_calls=autotune)
    else:
        ds = read().map(parse, num_parallel_calls=autotune, deterministic=True)
        ds = ds.repeat() if repeat else ds

    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    @tf.autograph.experimental.do_not_convert
    def finish(*batch: tf.Tensor, aug_seed: tf.Tensor | None = None) -> tuple:
        images = batch[0]
        if augmenting:
            images = augment(images, augment_cfg, seed=aug_seed)
        images = normalize(images, normalization)
        if not labeled:
            return images, batch[1]
        labels = _checked_labels(batch[1], batch[2], num_classes)
        return (images, labels, batch[2]) if with_ids else (images, labels)

    if augmenting:
        # One stateless seed pair per batch from a seeded stream that differs every epoch.
        # Per batch rather than per image: CPU time for default augmentation + normalise,
        # batch 32 vs per image (2 shared cores; wall time too noisy to rank): 64 px 0.44 vs
        # 0.76 s / 4096 images, 224 px 0.60 vs 0.66 s / 512, 512 px 0.81 vs 0.89 s / 128.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds)
        ds = ds.map(
            tf.autograph.experimental.do_not_convert(lambda batch, s: finish(*batch, aug_seed=s)),
            num_parallel_calls=autotune,
        )
    else:
        ds = ds.map(finish, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


# --------------------------------------------------------------------------- shared caches


def cache_budget() -> int:
    """Bytes all decoded-image caches of this process may hold together."""
    if _cache_budget is not None:
        return _cache_budget
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 * 2**30
    return int(total * CACHE_MEMORY_FRACTION)


def set_cache_budget(nbytes: int | None) -> None:
    """Cap the decoded-image caches at ``nbytes`` (``None``: back to the default share)."""
    global _cache_budget
    _cache_budget = nbytes
    _evict(0)


def clear_cache() -> None:
    """Forget every shared decoded-image cache (memory is freed once no dataset uses it)."""
    _decoded_caches.clear()


def _shared_cache(key: tuple, nbytes: int, build: Callable[[], Any]) -> Any:
    """The cached dataset for ``key``, built if it fits the budget; ``None`` if it cannot."""
    if key in _decoded_caches:
        _decoded_caches.move_to_end(key)
        return _decoded_caches[key][1]
    if nbytes > cache_budget():
        return None
    _evict(nbytes)
    dataset = build()
    _decoded_caches[key] = (nbytes, dataset)
    return dataset


def _evict(incoming: int) -> None:
    """Drop least recently used caches until ``incoming`` more bytes fit the budget."""
    budget = cache_budget()
    while _decoded_caches and sum(n for n, _ in _decoded_caches.values()) + incoming > budget:
        _decoded_caches.popitem(last=False)


# --------------------------------------------------------------------------- helpers


def _decode_uint8(jpeg: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG bytes → ``uint8 [S, S, 3]``, resizing only when the decoded size differs."""
    tf = tensorflow()
    image = tf.io.decode_jpeg(jpeg, channels=3)
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))

    def resized() -> tf.Tensor:
        out = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
        return tf.saturate_cast(tf.round(out), tf.uint8)

    # Extra sources may be stored at another size than the main root, so decide per image.
    image = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _parse_fn(labeled: bool, image_size: int, exact: bool):
    """Serialized record → ``(uint8 image, int64 label, id)`` or ``(uint8 image, id)``.

    ``exact``: every record is stored at ``image_size``, so no per-record size test and
    resize branch (a ``tf.cond`` per record costs ~10% of decoding a 64 px image); a record
    of another size then fails iteration (``shard_errors_named`` names it).
    """
    tf = tensorflow()
    spec = records.feature_spec(labeled=labeled)

    def parse(serialized: tf.Tensor) -> tuple:
        example = tf.io.parse_single_example(serialized, spec)
        if exact:
            image = tf.ensure_shape(tf.io.decode_jpeg(example["image"], channels=3), [image_size, image_size, 3])
        else:
            image = _decode_uint8(example["image"], image_size)
        if not labeled:
            return image, example["id"]
        return image, example["class"], example["id"]

    return parse


def _checked_labels(raw: tf.Tensor, record_ids: tf.Tensor, num_classes: int | None) -> tf.Tensor:
    """A batch of ``int64`` labels as ``int32``; with ``num_classes``, an ``InvalidArgumentError``
    naming the first label outside ``[0, num_classes)`` and its record.

    Checked per batch, with the message built only when the check fails: per record, the
    check and its message cost ~10% of decoding a 64 px image.
    """
    tf = tensorflow()
    label = tf.cast(raw, tf.int32)
    if num_classes is None:
        return label
    # Compare the int64 values: a huge label must not wrap into range when cast to int32.
    in_range = tf.logical_and(raw >= 0, raw < num_classes)

    def fail() -> tf.Tensor:
        first = tf.argmin(tf.cast(in_range, tf.int32))
        message = tf.strings.join(
            ["label ", tf.strings.as_string(raw[first]), " of record ", record_ids[first], f" is outside [0, {num_classes})"]
        )
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(label)

    return tf.cond(tf.reduce_all(in_range), lambda: label, fail)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def _check_normalization(mode: str) -> None:
    if mode not in NORMALIZATIONS:
        raise DataError(f"unknown normalization {mode!r}; allowed: {', '.join(NORMALIZATIONS)}")
