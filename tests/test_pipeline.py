"""tf.data pipelines: splits, shapes, resizing, normalisation, augmentation, order, ids, errors.

The data is a tiny competition-layout dataset built here: 3 classes, each a solid colour
whose strongest channel is the class index, with a grey marker square in the top-left corner
whose level encodes the record's position in its split. JPEGs are written at quality 95
without chroma subsampling, so flat regions decode within a few levels.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flower_exp.config import AugmentConfig
from flower_exp.data import pipeline, records
from flower_exp.data.pipeline import DataSource, make_dataset, split_files, steps_per_epoch
from flower_exp.errors import DataError

tf = pytest.importorskip("tensorflow")

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
SIZES = (32, 64)
COUNTS = {"train": 12, "val": 6, "test": 5}
SHARDS = {"train": 3, "val": 2, "test": 2}
JPEG_TOL = 4.0  # levels of 0..255 a flat JPEG region may drift


def marker_level(index: int) -> int:
    return 40 + 6 * index


def make_jpeg(size: int, label: int, index: int) -> bytes:
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = COLOURS[label]
    quarter = size // 4
    pixels[:quarter, :quarter] = marker_level(index)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def make_records(prefix: str, split: str, count: int, size: int, label_of=lambda i: i % 3) -> list[records.Record]:
    return [
        records.Record(image=make_jpeg(size, label_of(i) % 3, i), id=f"{prefix}{split[:2]}{i:05d}", label=label_of(i))
        for i in range(count)
    ]


def write_dataset(root: str, prefix: str, sizes=SIZES, counts=COUNTS) -> dict[int, dict[str, list[records.Record]]]:
    written: dict[int, dict[str, list[records.Record]]] = {}
    for size in sizes:
        written[size] = {}
        for split, count in counts.items():
            recs = make_records(prefix, split, count, size)
            records.write_split(root, size, split, recs, SHARDS[split])
            written[size][split] = recs
    return written


@dataclass
class Data:
    root: str
    extra: str
    written: dict[int, dict[str, list[records.Record]]]
    extra_written: dict[int, dict[str, list[records.Record]]]


@pytest.fixture(scope="module", autouse=True)
def _drop_shared_caches():
    """Datasets built here fill the process-wide decoded-image cache; free it afterwards."""
    yield
    pipeline.clear_cache()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    base = tmp_path_factory.mktemp("pipeline")
    root, extra = str(base / "main"), str(base / "extra")
    written = write_dataset(root, "m")
    # The extra source exists only at 64 px: reading it at 32 px exercises per-source resizing.
    extra_written = write_dataset(extra, "x", sizes=(64,), counts={"train": 4, "val": 2})
    return Data(root, extra, written, extra_written)


def collect(ds, limit: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """Batches as tuples of numpy arrays."""
    ds = ds.take(limit) if limit is not None else ds
    return [tuple(np.asarray(t) for t in batch) for batch in ds]


def unbatched(ds) -> tuple[np.ndarray, ...]:
    """Concatenate every batch's components."""
    batches = collect(ds)
    return tuple(np.concatenate([b[i] for b in batches]) for i in range(len(batches[0])))


def by_id(recs: list[records.Record]) -> dict[bytes, records.Record]:
    return {r.id.encode(): r for r in recs}


def decoded(jpeg: bytes, size: int) -> np.ndarray:
    return pipeline.decode_image(tf.constant(jpeg), size).numpy()


def centre(images: np.ndarray) -> np.ndarray:
    """Pixel in the flat class-colour region of each image."""
    s = images.shape[1]
    return images[:, s * 3 // 4, s * 3 // 4, :]


# --------------------------------------------------------------------------- files and counts


def test_split_files_counts(data):
    train = split_files(data.root, "train", 32)
    assert (train.count, len(train.files), train.stored_size) == (12, 3, 32)
    assert split_files(data.root, "val", 32).count == 6
    assert split_files(data.root, "test", 32).count == 5
    both = split_files(data.root, "train+val", 32)
    assert both.count == 18 and both.files == train.files + split_files(data.root, "val", 32).files
    # A size without a folder reads the nearest larger one.
    assert split_files(data.root, "train", 48).stored_size == 64
    # Extra data feeds training splits only, at its own stored size.
    extra = [DataSource(data.extra)]
    with_extra = split_files(data.root, "train", 32, extra)
    assert with_extra.count == 16 and any("64x64" in f for f in with_extra.files)
    assert split_files(data.root, "train", 32, [DataSource(data.extra, ("train", "val"))]).count == 18
    assert split_files(data.root, "train+val", 32, extra).count == 22
    assert split_files(data.root, "val", 32, extra).count == 6
    # Only where every source is stored at the size read do records skip the resize test.
    assert train.exact and not with_extra.exact and not split_files(data.root, "train", 48).exact
    assert split_files(data.root, "val", 32, extra).exact
    assert split_files(data.root, "test", 32, extra).count == 5
    with pytest.raises(DataError, match="'test'.*allowed: train, val"):
        split_files(data.root, "train", 32, [DataSource(data.extra, ("test",))])


def test_image_of_another_size_than_its_folder_is_named(tmp_path):
    root = str(tmp_path / "odd")
    recs = make_records("o", "train", 4, 32)
    recs[2] = records.Record(image=make_jpeg(40, 2, 2), id=recs[2].id, label=2)
    (shard,) = records.write_split(root, 32, "train", recs, 1)
    files = split_files(root, "train", 32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        collect(make_dataset(root, "train", image_size=32, batch_size=2, repeat=False))
    with pytest.raises(DataError, match=rf"^{shard}: record 2 \(otr00002\): image is 40x40, not 32x32 like its folder"):
        with pipeline.shard_errors_named(files):
            collect(make_dataset(root, "train", image_size=32, batch_size=2, repeat=False))
    # Read at a size that resizes anyway, the odd image is resized like the others.
    images, _ = unbatched(make_dataset(root, "train", image_size=16, batch_size=2, repeat=False, shuffle_buffer=0))
    assert images.shape == (4, 16, 16, 3)


def test_steps_per_epoch():
    assert steps_per_epoch(6, 4, False) == 2
    assert steps_per_epoch(6, 4, True) == 1
    assert steps_per_epoch(8, 4, True) == 2
    with pytest.raises(DataError, match="no full batch of 4"):
        steps_per_epoch(3, 4, True)
    with pytest.raises(DataError, match="batch size must be positive"):
        steps_per_epoch(3, 0, False)


# --------------------------------------------------------------------------- shapes and batching


def test_shapes_and_dtypes_per_split(data):
    img, label = next(iter(make_dataset(data.root, "train", image_size=32, batch_size=4, seed=0)))
    assert img.shape == (4, 32, 32, 3) and img.dtype == tf.float32
    assert label.shape == (4,) and label.dtype == tf.int32
    img, label, ids = next(iter(make_dataset(data.root, "val", image_size=32, batch_size=4, with_ids=True)))
    assert img.shape == (4, 32, 32, 3) and label.dtype == tf.int32 and ids.dtype == tf.string
    batch = next(iter(make_dataset(data.root, "test", image_size=32, batch_size=4)))
    assert len(batch) == 2
    img, ids = batch
    assert img.shape == (4, 32, 32, 3) and ids.dtype == tf.string


def test_batch_counts_and_drop_remainder(data):
    val = collect(make_dataset(data.root, "val", image_size=32, batch_size=4))
    assert [b[0].shape[0] for b in val] == [4, 2]
    val = collect(make_dataset(data.root, "val", image_size=32, batch_size=4, drop_remainder=True))
    assert [b[0].shape[0] for b in val] == [4]
    train = make_dataset(data.root, "train", image_size=32, batch_size=5, repeat=False, seed=0)
    assert sorted(b[0].shape[0] for b in collect(train)) == [2, 5, 5]
    train = make_dataset(data.root, "train", image_size=32, batch_size=5, repeat=False, drop_remainder=True)
    assert train.element_spec[0].shape == (5, 32, 32, 3)  # static batch dimension, as TPUs need
    assert [b[0].shape[0] for b in collect(train)] == [5, 5]
    # Training repeats by default: more batches than one epoch holds.
    assert len(collect(make_dataset(data.root, "train", image_size=32, batch_size=5, seed=0), limit=7)) == 7


def test_finite_datasets_know_their_length(data):
    assert len(make_dataset(data.root, "val", image_size=32, batch_size=4)) == 2
    assert len(make_dataset(data.root, "val", image_size=32, batch_size=4, drop_remainder=True)) == 1
    assert len(make_dataset(data.root, "test", image_size=32, batch_size=2)) == 3
    train = make_dataset(data.root, "train", image_size=32, batch_size=5, repeat=False, augment_cfg=AugmentConfig())
    assert len(train) == 3
    repeated = make_dataset(data.root, "train", image_size=32, batch_size=5)
    assert repeated.cardinality() == tf.data.INFINITE_CARDINALITY


def test_shard_count_mismatch_fails_loudly(tmp_path):
    root = str(tmp_path / "d")
    recs = make_records("n", "val", 3, 32)
    (path,) = records.write_split(root, 32, "val", recs, 1)
    Path(path).rename(path.replace("-3.tfrec", "-4.tfrec"))  # the name now claims 4 records
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain 4 elements but contained only 3"):
        collect(make_dataset(root, "val", image_size=32, batch_size=2, cache=False))


# --------------------------------------------------------------------------- resizing and normalisation


def test_resize_from_nearest_larger_folder(data):
    ds = make_dataset(data.root, "val", image_size=48, batch_size=4, with_ids=True, normalization="raw")
    images, labels, ids = unbatched(ds)
    assert images.shape == (6, 48, 48, 3)
    expected = np.array([COLOURS[label] for label in labels], np.float32)
    np.testing.assert_allclose(centre(images), expected, atol=JPEG_TOL)
    # Marker square (12 px at 48) keeps its level in its middle.
    np.testing.assert_allclose(images[:, 5, 5, 0], [marker_level(i) for i in range(6)], atol=JPEG_TOL)
    # Identical to decoding the stored 64 px JPEG at 48.
    val64 = by_id(data.written[64]["val"])
    for image, rid in zip(images, ids):
        np.testing.assert_array_equal(image, decoded(val64[rid].image, 48))


def test_larger_than_any_folder_is_refused(data):
    with pytest.raises(DataError, match=r"no shards at 128x128 or larger \(available: 32, 64\)"):
        make_dataset(data.root, "train", image_size=128, batch_size=4)


@pytest.mark.parametrize(
    ("mode", "low", "high"),
    [("raw", 0.0, 255.0), ("unit", 0.0, 1.0), ("tf", -1.0, 1.0), ("torch", -2.2, 2.7)],
)
def test_normalization_values(data, mode, low, high):
    images, labels = unbatched(make_dataset(data.root, "val", image_size=32, batch_size=6, normalization=mode))
    assert images.min() >= low and images.max() <= high
    colours = np.array([COLOURS[label] for label in labels], np.float32)
    mean, std = np.array(pipeline.IMAGENET_MEAN), np.array(pipeline.IMAGENET_STD)
    expected, tol = {
        "raw": (colours, JPEG_TOL),
        "unit": (colours / 255, JPEG_TOL / 255),
        "tf": (colours / 127.5 - 1, JPEG_TOL / 127.5),
        "torch": ((colours / 255 - mean) / std, JPEG_TOL / 255 / min(pipeline.IMAGENET_STD)),
    }[mode]
    np.testing.assert_allclose(centre(images), expected, atol=tol)
    # Labels line up with images: the strongest channel is the class.
    assert (centre(images).argmax(axis=1) == labels).all()


def test_normalize_function_exact():
    pixel = tf.constant([[[0, 127.5, 255]]], tf.float32)
    np.testing.assert_allclose(pipeline.normalize(pixel, "raw").numpy(), [[[0, 127.5, 255]]])
    np.testing.assert_allclose(pipeline.normalize(pixel, "unit").numpy(), [[[0, 0.5, 1]]])
    np.testing.assert_allclose(pipeline.normalize(pixel, "tf").numpy(), [[[-1, 0, 1]]])
    torch = [(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(pipeline.normalize(pixel, "torch").numpy(), [[torch]], rtol=1e-5)
    assert pipeline.normalize(tf.constant([[[255, 0, 0]]], tf.uint8), "unit").dtype == tf.float32


# --------------------------------------------------------------------------- augmentation


def test_val_and_test_never_augmented(data):
    cfg = AugmentConfig(enabled=True, crop_scale=0.5, brightness=0.5, contrast=0.5)
    for split in ("val", "test"):
        ds = make_dataset(
            data.root, split, image_size=32, batch_size=4, normalization="raw", augment_cfg=cfg, seed=1, with_ids=True
        )
        first, second = unbatched(ds), unbatched(ds)
        np.testing.assert_array_equal(first[0], second[0])
        stored = by_id(data.written[32][split])
        for image, rid in zip(first[0], first[-1], strict=True):
            np.testing.assert_array_equal(image, decoded(stored[rid].image, 32))


@pytest.mark.parametrize("cfg", [None, AugmentConfig(enabled=False)], ids=["none", "disabled"])
def test_train_without_augmentation_equals_plain_decode(data, cfg):
    ds = make_dataset(
        data.root, "train", image_size=32, batch_size=5, normalization="raw", augment_cfg=cfg, repeat=False, with_ids=True, seed=3
    )
    images, labels, ids = unbatched(ds)
    stored = by_id(data.written[32]["train"])
    assert sorted(ids) == sorted(stored)  # every record exactly once per epoch
    for image, label, rid in zip(images, labels, ids):
        assert label == stored[rid].label
        np.testing.assert_array_equal(image, decoded(stored[rid].image, 32))


def test_train_augmentation_changes_images(data):
    ds = make_dataset(
        data.root,
        "train",
        image_size=32,
        batch_size=4,
        normalization="raw",
        augment_cfg=AugmentConfig(),
        repeat=False,
        with_ids=True,
        seed=5,
    )
    images, labels, ids = unbatched(ds)
    stored = by_id(data.written[32]["train"])
    assert sorted(ids) == sorted(stored)
    assert all(label == stored[rid].label for label, rid in zip(labels, ids))
    assert images.min() >= 0 and images.max() <= 255
    diffs = [np.abs(image - decoded(stored[rid].image, 32)).max() for image, rid in zip(images, ids)]
    assert sum(d > 20 for d in diffs) >= len(diffs) // 2, diffs


def test_augment_is_seeded_and_keeps_shape():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 3)), tf.uint8)
    cfg = AugmentConfig()
    a = pipeline.augment(image, cfg, seed=3).numpy()
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, pipeline.augment(image, cfg, seed=3).numpy())
    assert not np.array_equal(a, pipeline.augment(image, cfg, seed=4).numpy())
    batch = pipeline.augment(tf.stack([image] * 8), cfg, seed=tf.constant([1, 2]))
    assert batch.shape == (8, 16, 16, 3)
    assert len({arr.tobytes() for arr in batch.numpy()}) == 8  # each image draws its own parameters
    assert pipeline.augment(image, cfg).shape == (16, 16, 3)  # unseeded works too


def test_augment_parts():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3)).astype(np.float32)
    batch = tf.constant(np.stack([image] * 16))
    off = AugmentConfig(flip=False, crop_scale=1.0, brightness=0.0, contrast=0.0)
    np.testing.assert_array_equal(pipeline.augment(batch, off, seed=0).numpy(), batch.numpy())
    flipped = pipeline.augment(batch, off.model_copy(update={"flip": True}), seed=0).numpy()
    mirrored = [np.allclose(out, image[:, ::-1], atol=1e-3) for out in flipped]
    same = [np.allclose(out, image, atol=1e-3) for out in flipped]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)
    bright = pipeline.augment(batch, off.model_copy(update={"brightness": 0.2}), seed=0).numpy()
    shift = bright - image
    inside = (image > 60) & (image < 190)  # unclipped pixels move by one per-image delta
    for s in shift:
        assert np.ptp(s[inside]) < 1e-3 and abs(s[inside][0]) <= 0.2 * 255 + 1e-3


@pytest.mark.parametrize(
    "cfg",
    [AugmentConfig(), AugmentConfig(crop_scale=0.5, brightness=0.0, contrast=0.0), AugmentConfig(flip=False, crop_scale=0.7)],
)
def test_matmul_resampling_equals_crop_and_resize_and_compiles_with_xla(cfg):
    batch = tf.constant(np.random.default_rng(2).integers(0, 256, (6, 29, 29, 3)), tf.uint8)
    reference = pipeline.augment(batch, cfg, seed=5).numpy()
    np.testing.assert_allclose(pipeline.augment(batch, cfg, seed=5, resample="matmul").numpy(), reference, atol=5e-3)
    # Under XLA the random draws may differ from eager, so compare the resampling alone.
    y1, x1, y2, x2 = (tf.constant(v, tf.float32) for v in ([0.0, 0.2, 0.1], [0.0, 0.9, 0.3], [1.0, 0.8, 0.95], [1.0, 0.2, 0.9]))
    compiled = tf.function(pipeline._resample_matmul, jit_compile=True)
    images = tf.cast(batch[:3], tf.float32)
    expected = tf.image.crop_and_resize(images, tf.stack([y1, x1, y2, x2], 1), tf.range(3), [29, 29])
    np.testing.assert_allclose(compiled(images, y1, x1, y2, x2).numpy(), expected.numpy(), atol=5e-3)
    with pytest.raises(DataError, match="unknown resample 'nearest'; allowed: crop_and_resize, matmul"):
        pipeline.augment(batch, cfg, resample="nearest")


def test_normalization_none_ships_uint8(data):
    images, _labels = next(
        iter(make_dataset(data.root, "train", image_size=32, batch_size=4, normalization="none", augment_cfg=None, seed=0))
    )
    assert images.dtype == tf.uint8 and images.shape == (4, 32, 32, 3)


# --------------------------------------------------------------------------- order, ids, splits


def test_val_and_test_order_and_ids(data):
    for split in ("val", "test"):
        stored = data.written[32][split]
        kwargs = {"with_ids": True} if split == "val" else {}
        out = unbatched(make_dataset(data.root, split, image_size=32, batch_size=2, normalization="raw", **kwargs))
        images, ids = out[0], out[-1]
        assert [i.decode() for i in ids] == [r.id for r in stored]
        np.testing.assert_allclose(images[:, 3, 3, 0], [marker_level(i) for i in range(len(stored))], atol=JPEG_TOL)
        if split == "val":
            assert out[1].tolist() == [r.label for r in stored]


def test_train_plus_val_has_both(data):
    ds = make_dataset(data.root, "train+val", image_size=32, batch_size=4, repeat=False, with_ids=True)
    _, labels, ids = unbatched(ds)
    expected = {r.id.encode(): r.label for split in ("train", "val") for r in data.written[32][split]}
    assert len(ids) == 18 and sorted(ids) == sorted(expected)
    assert all(expected[rid] == label for rid, label in zip(ids, labels))


def test_extra_source_feeds_training_only(data):
    extra = [DataSource(data.extra)]
    images, _, ids = unbatched(
        make_dataset(
            data.root, "train", image_size=32, batch_size=4, repeat=False, with_ids=True, extra=extra, normalization="raw"
        )
    )
    extra_recs = by_id(data.extra_written[64]["train"])
    assert len(ids) == 16 and set(extra_recs) <= set(ids)
    for image, rid in zip(images, ids):
        if rid in extra_recs:  # stored at 64, resized to 32 per image
            np.testing.assert_array_equal(image, decoded(extra_recs[rid].image, 32))
    _, _, val_ids = unbatched(make_dataset(data.root, "val", image_size=32, batch_size=4, with_ids=True, extra=extra))
    assert [i.decode() for i in val_ids] == [r.id for r in data.written[32]["val"]]
    both = [DataSource(data.extra, ("train", "val"))]
    ds = make_dataset(data.root, "train+val", image_size=32, batch_size=4, repeat=False, with_ids=True, extra=both)
    _, _, ids = unbatched(ds)
    assert len(ids) == 24


def test_val_cache_iterates_identically(data):
    ds = make_dataset(data.root, "val", image_size=32, batch_size=4, with_ids=True)
    first, second = collect(ds), collect(ds)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # A cached training split still yields every record once per pass.
    train = make_dataset(data.root, "train", image_size=32, batch_size=4, repeat=False, cache=True, with_ids=True, seed=2)
    assert sorted(unbatched(train)[2]) == sorted(unbatched(train)[2]) == sorted(by_id(data.written[32]["train"]))


def test_ram_filesystem_end_to_end():
    root = f"ram://flower-{uuid.uuid4().hex}/data"
    written = write_dataset(root, "r", sizes=(32,))
    ds = make_dataset(root, "train", image_size=32, batch_size=4, seed=0, augment_cfg=AugmentConfig())
    train = collect(ds, limit=4)
    assert all(b[0].shape == (4, 32, 32, 3) for b in train)
    _, ids = unbatched(make_dataset(root, "test", image_size=32, batch_size=4))
    assert [i.decode() for i in ids] == [r.id for r in written[32]["test"]]
    _, labels = unbatched(make_dataset(root, "val", image_size=32, batch_size=4))
    assert labels.tolist() == [r.label for r in written[32]["val"]]


def test_label_out_of_range_fails_clearly(tmp_path):
    root = str(tmp_path / "bad")
    # Labels are checked per batch: the bad one is second in its batch of 2 (records 2 and 3).
    recs = make_records("b", "train", 4, 32, label_of=lambda i: 5 if i == 3 else i % 3)
    records.write_split(root, 32, "train", recs, 1)
    records.write_split(root, 32, "val", recs, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label 5 of record btr00003 is outside \[0, 3\)"):
        collect(make_dataset(root, "val", image_size=32, batch_size=2, num_classes=3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="label 5 of record"):
        collect(make_dataset(root, "train", image_size=32, batch_size=2, num_classes=3, repeat=False))
    assert len(unbatched(make_dataset(root, "val", image_size=32, batch_size=2, num_classes=6))[1]) == 4
    assert len(unbatched(make_dataset(root, "val", image_size=32, batch_size=2))[1]) == 4


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "holdout"}, "unknown split 'holdout'; allowed: train, val, test, train\\+val"),
        ({"normalization": "caffe"}, "unknown normalization 'caffe'; allowed: raw, unit, tf, torch"),
        ({"batch_size": 0}, "batch size must be positive, got 0"),
        ({"image_size": 0}, "image size must be positive, got 0"),
        ({"image_size": -32}, "image size must be positive"),
        ({"num_classes": 0}, "num_classes must be positive"),
    ],
)
def test_argument_errors(data, kwargs, message):
    args = {"split": "train", "image_size": 32, "batch_size": 4} | kwargs
    split = args.pop("split")
    with pytest.raises(DataError, match=message):
        make_dataset(data.root, split, **args)


def test_normalize_rejects_unknown_mode():
    with pytest.raises(DataError, match="allowed: raw, unit, tf, torch"):
        pipeline.normalize(tf.zeros([2, 2, 3]), "imagenet")


def test_split_errors(data, tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        split_files(data.root, "training", 32)
    with pytest.raises(DataError, match="does not exist"):
        make_dataset(str(tmp_path / "missing"), "train", image_size=32, batch_size=4)


# --------------------------------------------------------------------------- shared decoded caches


@pytest.fixture
def fresh_cache():
    pipeline.clear_cache()
    yield
    pipeline.set_cache_budget(None)
    pipeline.clear_cache()


def rewrite_val(root: str, colour_of_label) -> None:
    """Overwrite the val shards in place (same names) with other colours."""
    recs = [records.Record(image=make_jpeg(32, colour_of_label(i % 3), i), id=f"v{i:08d}", label=i % 3) for i in range(6)]
    records.write_split(root, 32, "val", recs, SHARDS["val"])


def val_labels_from_colour(root: str) -> list[int]:
    images, _ = unbatched(make_dataset(root, "val", image_size=32, batch_size=6, normalization="raw"))
    return centre(images).argmax(axis=1).tolist()


def test_cache_is_shared_across_datasets(tmp_path, fresh_cache):
    root = str(tmp_path / "d")
    write_dataset(root, "c", sizes=(32,))
    assert val_labels_from_colour(root) == [0, 1, 2, 0, 1, 2]
    rewrite_val(root, lambda c: (c + 1) % 3)
    # A new dataset over the same shards reads the decoded images cached by the first one.
    assert val_labels_from_colour(root) == [0, 1, 2, 0, 1, 2]
    pipeline.clear_cache()
    assert val_labels_from_colour(root) == [1, 2, 0, 1, 2, 0]
    # cache=False never touches the shared cache.
    rewrite_val(root, lambda c: (c + 2) % 3)
    images, _ = unbatched(make_dataset(root, "val", image_size=32, batch_size=6, normalization="raw", cache=False))
    assert centre(images).argmax(axis=1).tolist() == [2, 0, 1, 2, 0, 1]


def test_cache_budget_bounds_memory(tmp_path, fresh_cache):
    root = str(tmp_path / "d")
    write_dataset(root, "c", sizes=(32, 64))
    one_val_32 = 6 * 32 * 32 * 3
    pipeline.set_cache_budget(one_val_32)
    collect(make_dataset(root, "val", image_size=32, batch_size=6))
    assert [n for n, _ in pipeline._decoded_caches.values()] == [one_val_32]
    # Too big for the budget: read uncached, nothing evicted.
    collect(make_dataset(root, "val", image_size=64, batch_size=6))
    assert len(pipeline._decoded_caches) == 1
    # A split that fits evicts the least recently used one.
    collect(make_dataset(root, "test", image_size=32, batch_size=6, cache=True))
    assert [key[0][0].split("/")[-2] for key in pipeline._decoded_caches] == ["test"]
    # Lowering the budget evicts at once.
    pipeline.set_cache_budget(0)
    assert not pipeline._decoded_caches
    # Uncached because of the budget, the data is still served correctly.
    rewrite_val(root, lambda c: (c + 1) % 3)
    assert val_labels_from_colour(root) == [1, 2, 0, 1, 2, 0]
