"""`data import-folder`: class folders of JPEG/PNG → competition TFRecords."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flower_exp.data import records
from flower_exp.data.importer import assign_ids, import_folder, split_counts
from flower_exp.errors import ConfigError, DataError

CLASSES = ["daisy", "rose", "tulip"]
PER_CLASS = 7


def make_image(seed: int, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    """A distinct picture: smooth random colour field plus a few random discs."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray((rng.random((5, 5, 3)) * 255).astype("uint8")).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(3):
        x, y = rng.integers(0, max(1, min(size) - 10), 2)
        r = int(rng.integers(6, max(7, min(size) // 2)))
        draw.ellipse([int(x), int(y), int(x) + r, int(y) + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return field.convert(mode)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, fmt, **kw)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (1-bit gray); its data is junk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def src(tmp_path) -> Path:
    """3 classes x 7 images: JPEG and PNG, odd shapes, an RGBA and a grayscale one, noise files."""
    root = tmp_path / "src"
    seed = 0
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            seed += 1
            shape = [(64, 64), (80, 60), (50, 70)][i % 3]
            suffix = [".jpg", ".png", ".JPEG", ".jpeg"][i % 4]
            mode = "RGBA" if (c, i) == (0, 1) else "L" if (c, i) == (1, 0) else "RGB"
            save(make_image(seed, shape, mode), root / name / f"img{i}{suffix}", **({"quality": 90} if suffix != ".png" else {}))
    (root / "rose" / "notes.txt").write_text("not an image, ignored")
    save(make_image(999), root / "rose" / ".hidden.jpg")  # hidden: ignored
    (root / ".git").mkdir()  # hidden folder: not a class
    return root


def parse_notebook_style(path: str, labeled: bool) -> list[dict]:
    """Read shards the way the competition notebooks do."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "id": tf.io.FixedLenFeature([], tf.string)}
    if labeled:
        spec["class"] = tf.io.FixedLenFeature([], tf.int64)
    out = []
    for raw in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(path))):
        ex = tf.io.parse_single_example(raw, spec)
        image = tf.image.decode_jpeg(ex["image"], channels=3)
        out.append(
            {
                "shape": tuple(image.shape),
                "id": ex["id"].numpy().decode(),
                "class": int(ex["class"]) if labeled else None,
                "raw": raw.numpy(),
            }
        )
    return out


def test_layout_readable_by_competition_code(src, tmp_path):
    out = tmp_path / "out"
    report = import_folder(str(src), str(out), sizes=(32, 48), shards=2, seed=3)

    assert report.classes == CLASSES
    assert report.sizes == [32, 48]
    assert report.skipped == [] and report.duplicates == []
    total = len(CLASSES) * PER_CLASS
    assert sum(report.counts.values()) == total
    assert (out / "classes.txt").read_text().split() == CLASSES
    assert records.available_sizes(str(out)) == [32, 48]

    import tensorflow as tf

    for size in (32, 48):
        seen = {}
        for split in ("train", "val", "test"):
            files = records.shard_files(str(out), size, split)
            assert 1 <= len(files) <= 2
            assert records.count_records(files) == report.counts[split]
            rows = parse_notebook_style(f"{out}/tfrecords-jpeg-{size}x{size}/{split}/*.tfrec", labeled=split != "test")
            assert len(rows) == report.counts[split]
            for row in rows:
                assert row["shape"] == (size, size, 3)
                if split == "test":
                    assert "class" not in tf.train.Example.FromString(row["raw"]).features.feature
                else:
                    assert 0 <= row["class"] < len(CLASSES)
            seen[split] = [r["id"] for r in rows]
        # every image exactly once, no id in two splits
        all_ids = [i for ids in seen.values() for i in ids]
        assert len(all_ids) == len(set(all_ids)) == total
        # test labels: header, class index, in test-record order
        lines = (out / "test_labels.csv").read_text().splitlines()
        assert lines[0] == "id,label"
        assert [line.split(",")[0] for line in lines[1:]] == seen["test"]
        assert all(0 <= int(line.split(",")[1]) < len(CLASSES) for line in lines[1:])

    manifest = json.loads((out / "import.json").read_text())
    assert manifest["source"] == str(src)
    assert manifest["counts"] == report.counts
    assert manifest["recipe"]["sizes"] == [32, 48] and manifest["recipe"]["seed"] == 3
    # nothing left behind beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_stratified_split_every_class_in_every_split(src, tmp_path):
    out = tmp_path / "out"
    import_folder(str(src), str(out), sizes=(32,), shards=1, val_fraction=0.2, test_fraction=0.2)
    per_class = json.loads((out / "import.json").read_text())["per_class"]
    for name in CLASSES:
        counts = per_class[name]
        assert counts["val"] >= 1 and counts["test"] >= 1
        assert sum(counts.values()) == PER_CLASS
    test_labels = [int(line.split(",")[1]) for line in (out / "test_labels.csv").read_text().splitlines()[1:]]
    assert sorted(set(test_labels)) == [0, 1, 2]


def test_split_counts():
    assert split_counts(3, 0.15, 0.15) == (1, 1, 1)
    assert split_counts(100, 0.15, 0.15) == (70, 15, 15)
    assert split_counts(10, 0.2, 0.0) == (8, 2, 0)
    assert split_counts(1, 0.15, 0.15) == (1, 0, 0)
    assert split_counts(2, 0.15, 0.15)[0] >= 1
    assert split_counts(4, 0.49, 0.49) == (1, 1, 2)
    for n in range(1, 40):
        train, val, test = split_counts(n, 0.3, 0.3)
        assert train >= 1 and train + val + test == n
        if n >= 3:
            assert val >= 1 and test >= 1


def test_no_test_split_when_fraction_zero(src, tmp_path):
    out = tmp_path / "out"
    report = import_folder(str(src), str(out), sizes=(32,), test_fraction=0.0)
    assert set(report.counts) == {"train", "val"}
    assert not (out / "tfrecords-jpeg-32x32" / "test").exists()
    assert not (out / "test_labels.csv").exists()


def test_ids_stable_and_from_content(src, tmp_path):
    first = import_folder(str(src), str(tmp_path / "a"), sizes=(32,), shards=2)
    # the same bytes under other file names give the same ids and the same split
    renamed = tmp_path / "renamed"
    shutil.copytree(src, renamed)
    for path in sorted(renamed.glob("*/img*")):
        path.rename(path.with_name("x_" + path.stem[::-1] + path.suffix))
    second = import_folder(str(renamed), str(tmp_path / "b"), sizes=(32,), shards=3)
    assert first.counts == second.counts

    def ids_by_split(root: Path) -> dict[str, dict[str, int | None]]:
        out = {}
        for split in ("train", "val", "test"):
            out[split] = {
                rec.id: rec.label for f in records.shard_files(str(root), 32, split) for _, rec in records.iter_shard(f)
            }
        return out

    a, b = ids_by_split(tmp_path / "a"), ids_by_split(tmp_path / "b")
    assert a == b
    expected = {hashlib.sha256(p.read_bytes()).hexdigest()[:9] for p in src.glob("*/img*")}
    got = {i for split in a.values() for i in split}
    assert got == expected
    assert all(len(i) == 9 and all(ch in "0123456789abcdef" for ch in i) for i in got)


def test_threaded_decoding_gives_identical_bytes(src, tmp_path):
    import_folder(str(src), str(tmp_path / "serial"), sizes=(32,), workers=1)
    import_folder(str(src), str(tmp_path / "threads"), sizes=(32,), workers=2)
    a = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.tfrec"))
    b = sorted(p.relative_to(tmp_path / "threads") for p in (tmp_path / "threads").rglob("*.tfrec"))
    assert a == b
    for rel in a:
        assert (tmp_path / "serial" / rel).read_bytes() == (tmp_path / "threads" / rel).read_bytes()


def test_assign_ids_extends_on_prefix_collision():
    d1 = "abcdef012" + "3" * 55
    d2 = "abcdef012" + "4" * 55
    d3 = "fedcba987" + "0" * 55
    ids = assign_ids([d2, d1, d3, d1])
    assert ids[d3] == "fedcba987"
    assert ids[d1] == "abcdef0123" and ids[d2] == "abcdef0124"
    assert assign_ids([d1, d2, d3]) == ids  # deterministic


def test_bad_images_reported_and_rest_imported(src, tmp_path):
    (src / "daisy" / "text.jpg").write_text("this is not a jpeg")
    good = io.BytesIO()
    make_image(4242).save(good, "JPEG", quality=90)
    (src / "rose" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (src / "tulip" / "empty.png").write_bytes(b"")

    report = import_folder(str(src), str(tmp_path / "out"), sizes=(32,))
    reasons = dict(line.split(": ", 1) for line in report.skipped)
    assert set(reasons) == {
        str(src / "daisy" / "text.jpg"),
        str(src / "rose" / "truncated.jpg"),
        str(src / "tulip" / "empty.png"),
    }
    assert "not an image" in reasons[str(src / "daisy" / "text.jpg")]
    assert "unreadable" in reasons[str(src / "rose" / "truncated.jpg")]
    assert sum(report.counts.values()) == len(CLASSES) * PER_CLASS
    manifest = json.loads((tmp_path / "out" / "import.json").read_text())
    assert manifest["skipped"] == report.skipped


def test_decompression_bombs_refused_before_decoding(src, tmp_path):
    (src / "daisy" / "bomb.png").write_bytes(png_header_only(20000, 20000))  # beyond Pillow's own limit
    (src / "rose" / "huge.png").write_bytes(png_header_only(8000, 8000))  # 64 Mpx > max_pixels
    report = import_folder(str(src), str(tmp_path / "out"), sizes=(32,))
    reasons = dict(line.split(": ", 1) for line in report.skipped)
    assert "pixels" in reasons[str(src / "daisy" / "bomb.png")] or "bomb" in reasons[str(src / "daisy" / "bomb.png")]
    assert "8000x8000" in reasons[str(src / "rose" / "huge.png")]
    assert "max_pixels" in reasons[str(src / "rose" / "huge.png")]
    assert sum(report.counts.values()) == len(CLASSES) * PER_CLASS

    # a small max_pixels refuses the large images of a real folder too
    small = tmp_path / "small"
    for c in range(2):
        for i in range(4):
            save(make_image(100 + 10 * c + i, (40, 40)), small / f"c{c}" / f"{i}.jpg")
        save(make_image(200 + c, (200, 150)), small / f"c{c}" / "big.jpg")
    report = import_folder(str(small), str(tmp_path / "out2"), sizes=(32,), max_pixels=40 * 40)
    assert len(report.skipped) == 2 and all("200x150" in s for s in report.skipped)
    assert sum(report.counts.values()) == 8


def test_duplicates_collapsed(src, tmp_path):
    for i in range(5):  # several copies: decoded concurrently by the worker threads
        shutil.copy(src / "daisy" / "img0.jpg", src / "daisy" / f"copy{i}.jpg")
    shutil.copy(src / "daisy" / "img3.jpeg", src / "rose" / "stray.jpg")  # same bytes, other class
    report = import_folder(str(src), str(tmp_path / "out"), sizes=(32,), workers=2)
    assert sum(report.counts.values()) == len(CLASSES) * PER_CLASS
    assert len(report.duplicates) == 6
    joined = "\n".join(report.duplicates)
    assert "copy4.jpg" in joined and "stray.jpg" in joined and "kept in 'daisy'" in joined
    ids = [
        rec.id
        for split in report.counts
        for f in records.shard_files(str(tmp_path / "out"), 32, split)
        for _, rec in records.iter_shard(f)
    ]
    assert len(ids) == len(set(ids))


def test_refuses_existing_output_unless_force(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="--force") as err:
        import_folder(str(src), str(out), sizes=(32,))
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    assert (out / "keep.txt").read_text() == "precious"

    report = import_folder(str(src), str(out), sizes=(32,), force=True)
    assert not (out / "keep.txt").exists()
    assert records.available_sizes(str(out)) == [32]
    assert sum(report.counts.values()) == len(CLASSES) * PER_CLASS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp or trash folders left

    empty = tmp_path / "empty"
    empty.mkdir()
    import_folder(str(src), str(empty), sizes=(32,))  # an empty folder is fine without force
    assert (empty / "classes.txt").exists()


def test_failed_import_leaves_no_output(tmp_path):
    src = tmp_path / "src"
    save(make_image(1), src / "a" / "1.jpg")
    (src / "b").mkdir()
    (src / "b" / "bad.jpg").write_text("nope")
    with pytest.raises(DataError, match="no readable images"):
        import_folder(str(src), str(tmp_path / "out"), sizes=(32,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": 0.0}, "val_fraction must be > 0"),
        ({"test_fraction": 1.2}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"sizes": (0,)}, "sizes"),
        ({"sizes": (32, -4)}, "sizes"),
        ({"sizes": ()}, "sizes"),
        ({"shards": 0}, "shards"),
        ({"quality": 0}, "quality"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_bad_arguments(src, tmp_path, kwargs, fragment):
    with pytest.raises(DataError, match=fragment) as err:
        import_folder(str(src), str(tmp_path / "out"), **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_sources(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        import_folder(str(empty), str(tmp_path / "out"))
    with pytest.raises(DataError, match="does not exist"):
        import_folder(str(tmp_path / "missing"), str(tmp_path / "out"))

    src = tmp_path / "src"
    save(make_image(1), src / "a" / "1.jpg")
    (src / "b").mkdir()
    (src / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no .jpg/.jpeg/.png images") as err:
        import_folder(str(src), str(tmp_path / "out"))
    assert str(src / "b") in str(err.value) and "\n" not in str(err.value)

    (src / "b" / "1.png").write_bytes(b"")
    with pytest.raises(DataError, match="outside the source"):
        import_folder(str(src), str(src / "out"))


def test_too_few_images_for_splits(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        save(make_image(ord(c)), src / c / "only.jpg")
    with pytest.raises(DataError, match="too few for a val split"):
        import_folder(str(src), str(tmp_path / "out"), sizes=(32,))


def test_import_experiment_adds_a_ready_experiment_and_replaces_it_only_with_force(src, tmp_path, monkeypatch):
    from flower_exp.config import load_experiment
    from flower_exp.data.importer import import_experiment

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    added = import_experiment(str(src), "mine", sizes=[32], shards=1)
    assert added.config_path == project / "experiments.yaml"
    assert added.settings == {
        "description": "3 classes of photos imported by flower-exp data import-folder",
        "data_dir": "data/mine",
        "image_size": 32,
        "batch_size_per_replica": 32,
        "shuffle_buffer": added.report.counts["train"],
    }
    exp = load_experiment("mine")
    assert exp.data_dir == str(project / "data" / "mine") and exp.config.generate is None
    assert (project / "data" / "mine" / "classes.txt").read_text().split() == CLASSES

    with pytest.raises(ConfigError, match="experiments.mine: already exists"):
        import_experiment(str(src), "mine", sizes=[32], shards=1, out=str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()  # refused before importing anything
    again = import_experiment(str(src), "mine", sizes=[32, 48], shards=1, force=True)
    text = (project / "experiments.yaml").read_text()
    assert text.count("\n  mine:\n") == 1 and text.count("# mine: written by flower-exp data import-folder") == 1
    assert again.report.sizes == [32, 48] and load_experiment("mine").config.image_size == 48
