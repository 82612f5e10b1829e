"""``inspect_dataset`` / ``render_report`` on good, damaged and remote datasets."""

from __future__ import annotations

import io
import re
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from flower_exp.data.demo import class_names, generate_demo
from flower_exp.data.inspect import InspectReport, inspect_dataset, render_report
from flower_exp.data.records import encode_example, iter_shard, shard_files
from flower_exp.errors import DataError

RECIPE = dict(classes=3, per_class=10, sizes=(32, 48), seed=5, shards=2)
COUNTS = {"train": 18, "val": 6, "test": 6}  # per class 6 / 2 / 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    """A tiny generated dataset; tests that damage data work on a copy (see ``copy``)."""
    root = tmp_path_factory.mktemp("inspect") / "data"
    generate_demo(str(root), **RECIPE)
    return str(root)


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(dataset, target)
    return target


def jpeg(size: int = 48, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png(size: int = 48) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_example(**features) -> bytes:
    """A tf.train.Example with exactly ``features`` (bytes -> bytes_list, int -> int64_list)."""
    import tensorflow as tf

    feature = {
        key: tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        if isinstance(value, int)
        else tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        for key, value in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shard(path: Path, examples: list[bytes]) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)
    return str(path)


def replace_split(root: Path, split: str, examples: list[bytes], size: int = 48) -> str:
    """Replace ``split`` at ``size`` by one shard holding ``examples``."""
    folder = root / f"tfrecords-jpeg-{size}x{size}" / split
    shutil.rmtree(folder)
    folder.mkdir()
    return write_shard(folder / f"00-{size}x{size}-{len(examples)}.tfrec", examples)


def first_record_cut_by(data: bytes, cut: int) -> int:
    """Index of the record that a file truncated at ``cut`` bytes loses first (TFRecord framing:
    8-byte length, 4-byte CRC, payload, 4-byte CRC)."""
    position, index = 0, 0
    while True:
        (length,) = struct.unpack("<Q", data[position : position + 8])
        end = position + 12 + length + 4
        if end > cut:
            assert position != cut, "cut on a record boundary: the file would just look shorter"
            return index
        position, index = end, index + 1


def assert_refused_then_skipped(root: Path, problem: str, split: str, records_read: int) -> None:
    """``inspect_dataset`` refuses ``root`` with ``problem``; with ``skip_corrupt`` it lists the
    problem and reads ``records_read`` records of ``split``."""
    with pytest.raises(DataError, match=re.escape(problem)):
        inspect_dataset(str(root))
    report = inspect_dataset(str(root), skip_corrupt=True)
    assert report.splits[split].records_read == records_read
    assert any(p.startswith(problem) for p in report.problems)


def test_counts_sizes_and_class_histogram(dataset):
    report = inspect_dataset(dataset)
    assert report.size == 48  # the largest available
    assert report.sizes_available == [32, 48]
    assert report.class_names == class_names(3)  # from classes.txt
    assert report.problems == []
    assert report.missing_splits == []
    assert report.duplicate_ids_across_splits == []
    assert report.sheet_path is None
    for split, count in COUNTS.items():
        stats = report.splits[split]
        assert (stats.shards, stats.records_by_name, stats.records_read) == (2, count, count)
        assert stats.image_sizes == {(48, 48): count}
        assert stats.duplicate_ids == [] and not stats.partial
    assert report.splits["train"].class_counts == {0: 6, 1: 6, 2: 6}
    assert report.splits["val"].class_counts == {0: 2, 1: 2, 2: 2}
    assert report.splits["test"].class_counts == {}  # unlabeled


def test_size_and_class_name_arguments(dataset, copy):
    report = inspect_dataset(dataset, size=32, class_names=["a", "b", "c"])
    assert report.size == 32
    assert report.splits["val"].image_sizes == {(32, 32): 6}
    assert report.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"no tfrecords-jpeg-64x64 folder; available sizes: 32, 48"):
        inspect_dataset(dataset, size=64)

    (copy / "classes.txt").unlink()
    assert inspect_dataset(str(copy)).class_names is None
    report = inspect_dataset(str(copy), class_names=["only", "two"])
    assert any("class outside 0..1" in p for p in report.problems)


def test_truncated_shard(copy):
    shard = Path(shard_files(str(copy), 48, "train")[1])
    data = shard.read_bytes()
    cut = len(data) // 2
    shard.write_bytes(data[:cut])
    lost_from = first_record_cut_by(data, cut)

    with pytest.raises(DataError, match=rf"{shard}: record {lost_from}: corrupt or truncated shard"):
        inspect_dataset(str(copy))

    report = inspect_dataset(str(copy), skip_corrupt=True)
    train = report.splits["train"]
    assert train.records_by_name == 18
    assert train.records_read == 9 + lost_from  # first shard whole, second up to the cut
    assert any(p.startswith(f"{shard}: record {lost_from}: corrupt or truncated") for p in report.problems)
    assert any("file names say 18 records but" in p for p in report.problems)
    assert report.splits["val"].records_read == 6 and report.splits["test"].records_read == 6


def test_record_missing_keys(copy):
    good = encode_example(jpeg(), "aaaaaaaa1", 0)
    no_image = raw_example(id=b"aaaaaaaa2", **{"class": 1})
    path = replace_split(copy, "val", [good, no_image, encode_example(jpeg(seed=3), "aaaaaaaa3", 2)])
    assert_refused_then_skipped(copy, f"{path}: record 1: missing key(s) image", "val", 2)


def test_non_jpeg_image(copy):
    records = [encode_example(jpeg(seed=i), f"bbbbbbbb{i}", 0) for i in range(2)]
    path = replace_split(copy, "val", records + [encode_example(png(), "bbbbbbbb2", 1)])
    with pytest.raises(DataError, match=rf"{path}: record 2: image is not JPEG data"):
        inspect_dataset(str(copy))


def test_jpeg_header_with_undecodable_body(copy):
    whole = jpeg()
    broken = whole[: int(len(whole) * 0.6)]  # SOI, tables and SOS intact; scan data cut short
    assert broken.startswith(b"\xff\xd8\xff")
    path = replace_split(copy, "val", [encode_example(broken, "cccccccc0", 0), encode_example(whole, "cccccccc1", 1)])
    assert_refused_then_skipped(copy, f"{path}: record 0: JPEG data cannot be decoded", "val", 1)


def test_labeled_record_without_class(copy):
    path = replace_split(copy, "train", [encode_example(jpeg(), "dddddddd0", None)])
    with pytest.raises(DataError, match=rf"{path}: record 0: no class in a labeled split"):
        inspect_dataset(str(copy))


def test_duplicate_ids_within_and_across_splits(dataset, copy):
    train_ids = [record.id for f in shard_files(dataset, 48, "train") for _, record in iter_shard(f)]
    val_ids = [record.id for f in shard_files(dataset, 48, "val") for _, record in iter_shard(f)]
    extra = [encode_example(jpeg(seed=1), train_ids[0], 0), encode_example(jpeg(seed=2), val_ids[0], 1)]
    write_shard(copy / "tfrecords-jpeg-48x48" / "train" / "02-48x48-2.tfrec", extra)

    report = inspect_dataset(str(copy))
    assert report.splits["train"].records_by_name == report.splits["train"].records_read == 20
    assert report.splits["train"].duplicate_ids == [train_ids[0]]
    assert report.duplicate_ids_across_splits == [val_ids[0]]
    assert any("1 ids occur more than once" in p and train_ids[0] in p for p in report.problems)
    assert any("1 ids appear in more than one split" in p and val_ids[0] in p for p in report.problems)


def test_count_in_file_name_disagrees(copy):
    shard = Path(shard_files(str(copy), 48, "val")[0])
    shard.rename(shard.with_name("00-48x48-99.tfrec"))
    report = inspect_dataset(str(copy))
    assert report.splits["val"].records_by_name == 102
    assert any("file names say 102 records but 6 valid records were read" in p for p in report.problems)


def test_missing_splits_and_roots(copy, tmp_path):
    shutil.rmtree(copy / "tfrecords-jpeg-48x48" / "test")
    report = inspect_dataset(str(copy))
    assert report.missing_splits == ["test"] and "test" not in report.splits
    assert report.problems == []  # no test split is fine (e.g. a private copy)

    shutil.rmtree(copy / "tfrecords-jpeg-48x48" / "val")
    report = inspect_dataset(str(copy))
    assert report.missing_splits == ["val", "test"]
    assert any("split 'val' missing" in p for p in report.problems)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tfrecords-jpeg-SxS folders"):
        inspect_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        inspect_dataset(str(tmp_path / "nowhere"))


def test_max_records_stops_early(dataset):
    report = inspect_dataset(dataset, max_records=5)
    train = report.splits["train"]
    assert (train.records_read, train.records_by_name, train.partial) == (5, 18, True)
    assert report.problems == []  # reading less on purpose is not a mismatch


def test_contact_sheet(dataset, tmp_path):
    from PIL import Image

    path = tmp_path / "sheets" / "train.png"
    report = inspect_dataset(dataset, sheet_path=str(path), sheet_samples=5)
    assert report.sheet_path == str(path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 150
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.png"]  # no temp file left


def test_unwritable_contact_sheet_is_a_data_error(dataset, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DataError, match="cannot write the contact sheet"):
        inspect_dataset(dataset, sheet_path=str(blocker / "sheet.png"))


def test_through_a_gfile_url():
    """ram:// goes through tf.io.gfile like gs:// would: nothing may assume a local path."""
    import tensorflow as tf

    parent = f"ram://inspect-test-{uuid.uuid4().hex[:8]}"  # ram:// lives as long as the process
    root = f"{parent}/data"
    generate_demo(root, **RECIPE)
    report = inspect_dataset(root, sheet_path=f"{parent}/sheet.png", sheet_samples=6)
    assert {split: s.records_read for split, s in report.splits.items()} == COUNTS
    assert report.class_names == class_names(3)
    assert report.problems == []
    with tf.io.gfile.GFile(f"{parent}/sheet.png", "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE


def render(report: InspectReport) -> str:
    console = Console(record=True, width=160, file=io.StringIO(), color_system=None)
    render_report(report, console)
    return console.export_text()


def test_render_report(dataset, copy):
    text = render(inspect_dataset(dataset))
    for fragment in ("train", "val", "test", "48x48: 18", "red four-petal daisy", "No problems found."):
        assert fragment in text

    shutil.rmtree(copy / "tfrecords-jpeg-48x48" / "test")
    shard = Path(shard_files(str(copy), 48, "train")[0])
    shard.rename(shard.with_name("00-48x48-10.tfrec"))
    text = render(inspect_dataset(str(copy)))
    assert "19 ≠" not in text and "18 ≠" in text  # read count flagged against the names' 19
    assert "missing (allowed)" in text
    assert "Problems (1):" in text and "file names say 19 records" in text
