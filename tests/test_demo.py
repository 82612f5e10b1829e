"""The generated demo dataset: competition layout, determinism, atomicity, learnability."""

from __future__ import annotations

import csv
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from flower_exp.data import demo
from flower_exp.data.demo import DemoInfo, class_names, ensure_demo, generate_demo
from flower_exp.data.records import count_from_name, shard_files
from flower_exp.errors import DataError

SMALL = dict(classes=4, per_class=10, sizes=(32, 48), seed=3, shards=2)
SMALL_COUNTS = {"train": 24, "val": 8, "test": 8}  # per class 6 / 2 / 2
TINY = dict(classes=2, per_class=5, sizes=(16,), seed=0, shards=1)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> tuple[str, DemoInfo]:
    root = tmp_path_factory.mktemp("small-demo") / "data"
    info = generate_demo(str(root), **SMALL)
    return str(root), info


@pytest.fixture(scope="session")
def default_demo(tmp_path_factory) -> tuple[str, float]:
    """The recipe of the shipped demo experiment, and how long it took to generate."""
    root = tmp_path_factory.mktemp("default-demo") / "data"
    start = time.perf_counter()
    generate_demo(str(root))
    return str(root), time.perf_counter() - start


def notebook_read(files: list[str], labeled: bool) -> list[tuple[np.ndarray, int | None, str]]:
    """Read shards exactly as the competition notebooks do."""
    import tensorflow as tf

    feature = {"image": tf.io.FixedLenFeature([], tf.string), "id": tf.io.FixedLenFeature([], tf.string)}
    if labeled:
        feature["class"] = tf.io.FixedLenFeature([], tf.int64)
    out = []
    for raw in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(raw, feature)
        image = tf.image.decode_jpeg(example["image"], channels=3).numpy()
        label = int(example["class"]) if labeled else None
        out.append((image, label, example["id"].numpy().decode()))
    return out


def read_split(root: str, size: int, split: str):
    return notebook_read(shard_files(root, size, split), labeled=split != "test")


def test_layout_names_and_counts(small_demo):
    import tensorflow as tf

    root, info = small_demo
    assert sorted(os.listdir(root)) == [
        "classes.txt",
        "demo.json",
        "test_labels.csv",
        "tfrecords-jpeg-32x32",
        "tfrecords-jpeg-48x48",
    ]
    assert os.listdir(Path(root).parent) == ["data"], "temporary folder left behind"
    assert info.sizes == [32, 48]
    assert info.counts == SMALL_COUNTS
    assert info.classes == class_names(4)
    assert Path(root, "classes.txt").read_text().splitlines() == info.classes
    for size in (32, 48):
        for split in ("train", "val", "test"):
            files = shard_files(root, size, split)
            assert [Path(f).parent.name for f in files] == [split, split]
            for index, path in enumerate(files):
                assert re.fullmatch(rf"0{index}-{size}x{size}-\d+\.tfrec", Path(path).name)
                # The count in the name is what the notebooks trust: it must be the truth.
                assert count_from_name(path) == sum(1 for _ in tf.data.TFRecordDataset(path))
            assert sum(count_from_name(f) for f in files) == SMALL_COUNTS[split]


def test_records_parse_with_competition_notebook_code(small_demo):
    import tensorflow as tf

    root, _ = small_demo
    for size in (32, 48):
        for split in ("train", "val", "test"):
            records = read_split(root, size, split)
            assert len(records) == SMALL_COUNTS[split]
            for image, label, _ in records:
                assert image.shape == (size, size, 3) and image.dtype == np.uint8
                assert label is None or 0 <= label < 4
                assert image.std() > 10, "blank image"
        # The test split is unlabeled, like the competition's.
        with pytest.raises(tf.errors.InvalidArgumentError):
            notebook_read(shard_files(root, size, "test"), labeled=True)


def test_ids_are_unique_hex_and_identical_across_sizes(small_demo):
    root, _ = small_demo
    all_ids = []
    for split in ("train", "val", "test"):
        ids_32 = [rid for _, _, rid in read_split(root, 32, split)]
        ids_48 = [rid for _, _, rid in read_split(root, 48, split)]
        assert ids_32 == ids_48  # same images in the same order at every size
        all_ids += ids_32
    assert all(re.fullmatch(r"[0-9a-f]{9}", rid) for rid in all_ids)
    assert len(set(all_ids)) == len(all_ids) == sum(SMALL_COUNTS.values())


def test_splits_are_stratified_and_shuffled(small_demo):
    root, _ = small_demo
    for split, per_class in (("train", 6), ("val", 2)):
        labels = [label for _, label, _ in read_split(root, 32, split)]
        assert np.bincount(labels, minlength=4).tolist() == [per_class] * 4
        assert labels != sorted(labels), "records should not be grouped by class"
    test_labels = [int(row["label"]) for row in csv.DictReader(open(Path(root, "test_labels.csv")))]
    assert np.bincount(test_labels, minlength=4).tolist() == [2] * 4


def test_test_labels_csv_follows_test_split_order(small_demo):
    root, _ = small_demo
    lines = Path(root, "test_labels.csv").read_text().splitlines()
    assert lines[0] == "id,label"
    rows = [line.split(",") for line in lines[1:]]
    assert [rid for rid, _ in rows] == [rid for _, _, rid in read_split(root, 48, "test")]
    assert all(label.isdigit() and 0 <= int(label) < 4 for _, label in rows)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(small_demo, tmp_path):
    root, _ = small_demo
    generate_demo(str(tmp_path / "again"), **SMALL)
    first, again = tree_bytes(Path(root)), tree_bytes(tmp_path / "again")
    assert first.keys() == again.keys()
    assert [name for name in first if first[name] != again[name]] == []

    generate_demo(str(tmp_path / "other"), **{**SMALL, "seed": 4})
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == first.keys()
    shards = [name for name in first if name.endswith(".tfrec")]
    assert all(first[name] != other[name] for name in shards)
    assert other["classes.txt"] == first["classes.txt"]  # classes do not depend on the seed
    ids = {rid for _, _, rid in read_split(root, 32, "train")}
    assert ids.isdisjoint(rid for _, _, rid in read_split(str(tmp_path / "other"), 32, "train"))


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "data"
    generate_demo(str(out), **TINY)
    before = tree_bytes(out)
    with pytest.raises(DataError, match=r"already exists.*--force") as exc:
        generate_demo(str(out), **{**TINY, "seed": 1})
    assert str(out) in str(exc.value) and "\n" not in str(exc.value)
    assert tree_bytes(out) == before

    info = generate_demo(str(out), **{**TINY, "seed": 1}, force=True)
    assert info.root == str(out)
    assert '"seed": 1' in (out / "demo.json").read_text()
    assert tree_bytes(out) != before
    assert os.listdir(tmp_path) == ["data"], "temporary or backup folder left behind"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        generate_demo(str(foreign), **TINY)
    generate_demo(str(foreign), **TINY, force=True)
    assert not (foreign / "notes.txt").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_demo(str(empty), **TINY)  # an empty folder is not data to protect
    assert (empty / "demo.json").exists()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        generate_demo(str(a_file), **TINY)


def test_process_pool_gives_the_same_bytes(small_demo, tmp_path, monkeypatch):
    """Big datasets render in worker processes; the output must not depend on that."""
    root, _ = small_demo
    monkeypatch.setattr(demo, "_POOL_THRESHOLD", 0)
    monkeypatch.setattr(demo, "_MAX_WORKERS", 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    used = []
    real_render_all = demo._render_all
    monkeypatch.setattr(demo, "_render_all", lambda jobs, pool: used.append(pool) or real_render_all(jobs, pool))
    generate_demo(str(tmp_path / "pooled"), **SMALL)
    assert used and all(pool is not None for pool in used)
    assert tree_bytes(tmp_path / "pooled") == tree_bytes(Path(root))


def test_unwritable_location_is_a_data_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DataError, match="cannot create a folder next to it"):
        generate_demo(str(blocker / "data"), **TINY)


def test_crash_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write_split(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    real = demo.write_split
    monkeypatch.setattr(demo, "write_split", failing_write_split)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo(str(tmp_path / "data"), **TINY)
    assert os.listdir(tmp_path) == []


def test_ensure_demo_reuses_or_refuses(tmp_path):
    out = tmp_path / "data"
    info, created = ensure_demo(str(out), **TINY)
    assert created and info.counts == {"train": 6, "val": 2, "test": 2}
    shard = shard_files(str(out), 16, "train")[0]
    stamp = os.stat(shard).st_mtime_ns

    again, created = ensure_demo(str(out), **{**TINY, "sizes": [16, 16]})  # same recipe, normalised
    assert not created and again == info
    assert os.stat(shard).st_mtime_ns == stamp, "an up-to-date dataset must not be rewritten"

    with pytest.raises(DataError, match=r"different recipe \(per_class 5 != 6\).*--force") as exc:
        ensure_demo(str(out), **{**TINY, "per_class": 6})
    assert "\n" not in str(exc.value)

    os.remove(shard)
    with pytest.raises(DataError, match=r"incomplete demo dataset.*split 'train' missing.*--force"):
        ensure_demo(str(out), **TINY)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a generated demo dataset"):
        ensure_demo(str(foreign), **TINY)


def test_ensure_demo_is_safe_for_concurrent_workers(tmp_path, monkeypatch):
    """Sweep workers start together and all call ensure_demo on the same folder."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(2)
    real_publish = demo._publish

    def publish_together(*args):
        barrier.wait(timeout=60)  # both have a finished copy: force the race
        return real_publish(*args)

    monkeypatch.setattr(demo, "_publish", publish_together)
    out = str(tmp_path / "data")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: ensure_demo(out, **TINY), range(2)))
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0] == results[1][0]
    assert os.listdir(tmp_path) == ["data"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 1}, "between 2 and 104"),
        ({"classes": 105}, "between 2 and 104"),
        ({"classes": "6"}, "must be an integer"),
        ({"classes": True}, "must be an integer"),
        ({"per_class": 4}, "at least 5"),
        ({"sizes": []}, "non-empty"),
        ({"sizes": 32}, "non-empty"),
        ({"sizes": [0, 32]}, "positive"),
        ({"sizes": [2.5]}, "must be an integer"),
        ({"shards": 0}, "at least 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate_demo(str(tmp_path / "data"), **{**TINY, **kwargs})
    with pytest.raises(DataError, match=message):
        ensure_demo(str(tmp_path / "data"), **{**TINY, **kwargs})
    assert os.listdir(tmp_path) == []


def test_class_names_are_readable_distinct_and_stable():
    names = class_names(104)
    assert len(set(names)) == 104
    assert class_names(6) == names[:6]
    assert names[0] == "red four-petal daisy"
    assert all(re.fullmatch(r"[a-z]+ [a-z]+-petal [a-z]+", name) for name in names)
    # Neighbouring classes share a colour but not a shape: colour alone cannot separate them.
    assert names[0].split()[0] == names[1].split()[0] and names[0].split()[-1] != names[1].split()[-1]
    with pytest.raises(DataError):
        class_names(105)


def test_works_on_a_gfile_filesystem():
    import tensorflow as tf

    parent = f"ram://demo-test-{uuid.uuid4().hex[:8]}"  # ram:// lives as long as the process
    out = f"{parent}/data"
    info = generate_demo(out, **TINY)
    assert info.counts == {"train": 6, "val": 2, "test": 2}
    assert tf.io.gfile.listdir(parent) == ["data"]  # temporary folder removed
    assert len(notebook_read(shard_files(out, 16, "train"), labeled=True)) == 6
    assert ensure_demo(out, **TINY) == (info, False)
    with pytest.raises(DataError, match="already exists"):
        generate_demo(out, **TINY)


# --------------------------------------------------------------- the images themselves


def centre_colour_features(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """Colour histogram of the central half of each image (where the flower is)."""
    n = images.shape[1]
    centre = images[:, n // 4 : n - n // 4, n // 4 : n - n // 4]
    q = centre.astype(int) * bins // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in codes]) / codes[0].size
    return np.sqrt(hist)


def nearest_centroid_accuracy(train_x, train_y, x, y) -> float:
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in range(train_y.max() + 1)])
    predicted = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    return float((predicted == y).mean())


def test_default_recipe_is_quick_and_learnable_but_not_trivial(default_demo):
    root, seconds = default_demo
    assert seconds < 30, f"default demo took {seconds:.1f}s to generate"

    def load(split):
        records = read_split(root, 64, split)
        labels = np.array([-1 if r[1] is None else r[1] for r in records])
        return np.stack([r[0] for r in records]), labels, [r[2] for r in records]

    train_x, train_y, _ = load("train")
    val_x, val_y, _ = load("val")
    test_x, _, test_ids = load("test")
    labels = {row["id"]: int(row["label"]) for row in csv.DictReader(open(Path(root, "test_labels.csv")))}
    test_y = np.array([labels[i] for i in test_ids])

    feats = centre_colour_features(train_x)
    chance = 1 / 6
    val_acc = nearest_centroid_accuracy(feats, train_y, centre_colour_features(val_x), val_y)
    test_acc = nearest_centroid_accuracy(feats, train_y, centre_colour_features(test_x), test_y)
    # Learnable: a crude colour classifier beats chance by far (and the CSV labels agree).
    assert val_acc > 2 * chance, val_acc
    assert test_acc > 2 * chance, test_acc
    # Not trivial: classes sharing a colour need shape to tell apart.
    assert val_acc < 0.9, val_acc


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit DCT hashes (the usual pHash: 32x32 grey, low 8x8 frequencies vs median)."""
    from PIL import Image

    k = np.arange(32)
    dct = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / 64)
    bits = []
    for image in images:
        grey = np.asarray(Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
        low = (dct @ grey @ dct.T)[:8, :8].ravel()
        bits.append(low > np.median(low))
    return np.array(bits)


def test_images_are_not_near_duplicates(default_demo):
    """The leakage guard treats images within a few bits of pHash as the same photo; generated
    train and val/test images must not trip it."""
    root, _ = default_demo
    train = perceptual_hashes(np.stack([r[0] for r in read_split(root, 64, "train")]))
    held_out = perceptual_hashes(np.stack([r[0] for s in ("val", "test") for r in read_split(root, 64, s)]))
    distances = (train[:, None, :] != held_out[None, :, :]).sum(-1)
    assert distances.min() > 6, distances.min()
    assert distances.mean() > 25
