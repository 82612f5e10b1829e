"""The leakage guard: perceptual hashes across train/val/test and extra data."""

from __future__ import annotations

import io
import itertools
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flower_exp.data import leakage, records
from flower_exp.data.leakage import (
    HashedImage,
    check_leakage,
    data_fingerprint,
    ensure_no_leakage,
    hamming,
    image_hash,
    near_pairs,
    plot_pairs,
)
from flower_exp.errors import DataError, LeakageError


def make_image(seed: int, size: int = 64) -> Image.Image:
    """A distinct picture: smooth random colour field plus a few random discs."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((5, 5, 3)) * 255).astype("uint8")).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.integers(0, size - 10, 2)
        r = int(rng.integers(size // 8, size // 2))
        draw.ellipse([int(x), int(y), int(x) + r, int(y) + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def altered(data: bytes, size: int, quality: int) -> bytes:
    """The same photo, resized and re-encoded."""
    return jpeg(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.LANCZOS), quality)


def recs(seeds, size: int = 64, label: int = 0) -> list[records.Record]:
    return [records.Record(image=jpeg(make_image(s, size)), id=f"img{s:06d}", label=label) for s in seeds]


def write_root(root: Path, splits: dict[str, list[records.Record]], size: int = 64, shards: int = 2) -> str:
    for split, items in splits.items():
        records.write_split(str(root), size, split, items, shards)
    return str(root)


@pytest.fixture
def clean(tmp_path) -> str:
    """Distinct images: 24 train, 8 val, 8 test at 64 px."""
    return write_root(
        tmp_path / "clean",
        {"train": recs(range(0, 24)), "val": recs(range(100, 108)), "test": recs(range(200, 208))},
    )


@pytest.fixture
def leaky(tmp_path) -> str:
    """Like ``clean`` but val holds train image 5 again, resized 64→40→64 and re-encoded."""
    train = recs(range(0, 24))
    planted = altered(altered(train[5].image, 40, 80), 64, 70)
    val = recs(range(100, 107)) + [records.Record(image=planted, id="planted", label=0)]
    return write_root(tmp_path / "leaky", {"train": train, "val": val, "test": recs(range(200, 208))})


@pytest.fixture
def extra_with_test_image(tmp_path, clean) -> str:
    """An extra source (32 px only) holding one of the main test images, resized and re-encoded."""
    _, test_image = next(records.iter_shard(records.shard_files(clean, 64, "test")[0]))
    copy = records.Record(image=altered(test_image.image, 32, 75), id="copied", label=1)
    return write_root(tmp_path / "extra", {"train": recs(range(300, 310), size=32) + [copy]}, size=32, shards=1)


# --------------------------------------------------------------------------- image_hash


def test_image_hash_robust_to_resize_and_reencode():
    for seed in range(20):
        original = jpeg(make_image(seed, 64), 95)
        h = image_hash(original)
        assert 0 <= h < 2**64
        assert image_hash(original) == h  # deterministic
        assert hamming(h, image_hash(altered(original, 32, 60))) <= 4
        png = io.BytesIO()
        make_image(seed, 64).save(png, "PNG")
        assert hamming(h, image_hash(png.getvalue())) <= 4


def test_image_hash_far_for_distinct_images():
    hashes = [image_hash(jpeg(make_image(seed))) for seed in range(40)]
    distances = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) > 10
    assert 24 <= float(np.mean(distances)) <= 40


def test_near_pairs_matches_brute_force_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    a_hashes = rng.integers(0, 2**63, 300, dtype=np.uint64) * 2 + 1
    b_hashes = np.concatenate([a_hashes[:5] ^ np.uint64(0b101), rng.integers(0, 2**63, 200, dtype=np.uint64)])
    a = [HashedImage("main", "train", "s", i, f"a{i}", int(h)) for i, h in enumerate(a_hashes)]
    b = [HashedImage("main", "val", "s", i, f"b{i}", int(h)) for i, h in enumerate(b_hashes)]
    monkeypatch.setattr(leakage, "_CHUNK_ELEMENTS", 1000)  # many row blocks
    got = {(p.a.id, p.b.id, p.distance) for p in near_pairs(a, b, 20)}
    want = {(x.id, y.id, hamming(x.hash, y.hash)) for x in a for y in b if hamming(x.hash, y.hash) <= 20}
    assert got == want
    assert {(f"a{i}", f"b{i}", 2) for i in range(5)} <= got


def test_near_pairs_fast_at_competition_scale():
    rng = np.random.default_rng(1)
    a = [
        HashedImage("main", "train", "s", i, str(i), int(h))
        for i, h in enumerate(rng.integers(0, 2**63, 13_000, dtype=np.uint64))
    ]
    b = [HashedImage("main", "val", "s", i, str(i), int(h)) for i, h in enumerate(rng.integers(0, 2**63, 7_000, dtype=np.uint64))]
    start = time.perf_counter()
    pairs = near_pairs(a, b, 6)
    assert time.perf_counter() - start < 10
    assert len(pairs) < 5  # random 64-bit hashes essentially never come that close


# --------------------------------------------------------------------------- check_leakage


def test_clean_dataset_has_no_pairs(clean):
    report = check_leakage(clean, size=64)
    assert report.pairs == []
    assert report.by_kind() == {}
    assert report.checked == {"main:train": 24, "main:val": 8, "main:test": 8}
    assert report.max_distance == 6 and len(report.fingerprint) == 16
    assert "no leaked pairs" in report.summary()


def test_planted_duplicate_found(leaky):
    report = check_leakage(leaky, size=32)  # 32 is read from the 64 px shards
    assert len(report.pairs) == 1
    pair = report.pairs[0]
    assert (pair.a.split, pair.a.id) == ("train", "img000005")
    assert (pair.b.split, pair.b.id) == ("val", "planted")
    assert pair.distance <= 6
    assert report.by_kind() == {"train~val": 1}
    assert report.internal_pairs == report.pairs and report.extra_pairs == []
    # the reported position points at the very record
    rec = dict(records.iter_shard(pair.b.shard))[pair.b.index]
    assert rec.id == "planted"


def test_missing_test_split_is_fine_missing_val_is_not(tmp_path):
    root = write_root(tmp_path / "d", {"train": recs(range(10)), "val": recs(range(10, 14))})
    report = check_leakage(root, size=64)
    assert set(report.checked) == {"main:train", "main:val"}
    novals = write_root(tmp_path / "n", {"train": recs(range(10))})
    with pytest.raises(DataError, match="val"):
        check_leakage(novals, size=64)


def test_extra_source_leaking_into_test_is_refused(clean, extra_with_test_image, tmp_path):
    extra = [(extra_with_test_image, ["train"])]
    with pytest.raises(LeakageError) as err:
        ensure_no_leakage(clean, size=64, extra=extra, max_distance=6, cache_dir=None)
    message = str(err.value)
    assert "\n" not in message
    assert extra_with_test_image in message
    assert "1 image pair" in message
    assert "copied" in message and "img000200" in message
    assert "--allow-leakage" in message and "extra_data" in message

    report = ensure_no_leakage(clean, size=64, extra=extra, max_distance=6, cache_dir=None, allow=True)
    assert report.by_kind() == {f"extra:{extra_with_test_image}~test": 1}
    assert report.checked[f"extra:{extra_with_test_image}:train"] == 11
    assert [(p.a.id, p.b.id) for p in report.extra_pairs] == [("copied", "img000200")]

    # leaks inside the main data are returned, not fatal
    leaky_root = write_root(tmp_path / "l", {"train": recs(range(0, 6)), "val": recs([3, 50])})
    report = ensure_no_leakage(leaky_root, size=64, extra=[], max_distance=6, cache_dir=None)
    assert report.by_kind() == {"train~val": 1}


def test_report_and_hashes_cached(leaky, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    calls = {"n": 0}
    real = leakage.image_hash

    def counting(data):
        calls["n"] += 1
        return real(data)

    monkeypatch.setattr(leakage, "image_hash", counting)
    first = check_leakage(leaky, size=64, cache_dir=cache)
    assert calls["n"] == 24 + 8 + 8 and not first.cached
    assert list((tmp_path / "cache" / "leakage").glob("*.json"))
    assert list((tmp_path / "cache" / "hashes").glob("*.npz"))

    def fail(_data):
        raise AssertionError("image_hash called on a cache hit")

    monkeypatch.setattr(leakage, "image_hash", fail)
    second = check_leakage(leaky, size=64, cache_dir=cache)
    assert second.cached
    assert second.pairs == first.pairs and second.checked == first.checked
    assert second.fingerprint == first.fingerprint

    # another threshold: a new report, but from cached shard hashes
    third = check_leakage(leaky, size=64, cache_dir=cache, max_distance=0)
    assert not third.cached and third.max_distance == 0
    assert third.checked == first.checked


def test_fingerprint_changes_with_data_and_not_with_location(leaky, tmp_path, monkeypatch):
    before = data_fingerprint(leaky, 64)
    assert before == data_fingerprint(leaky, 64)
    moved = shutil.copytree(leaky, tmp_path / "moved")
    assert data_fingerprint(str(moved), 64) == before
    assert data_fingerprint(leaky, 64, extra=[str(moved)]) != before

    cache = str(tmp_path / "cache")
    assert len(check_leakage(leaky, size=64, cache_dir=cache).pairs) == 1
    # rewrite the val shards without the planted image: fingerprint and report follow
    val_dir = Path(leaky) / "tfrecords-jpeg-64x64" / "val"
    shutil.rmtree(val_dir)
    records.write_split(leaky, 64, "val", recs(range(100, 107)), 2)
    after = data_fingerprint(leaky, 64)
    assert after != before
    report = check_leakage(leaky, size=64, cache_dir=cache)
    assert not report.cached and report.pairs == [] and report.fingerprint == after


# --------------------------------------------------------------------------- plot


def test_plot_pairs_writes_png(leaky, clean, extra_with_test_image, tmp_path):
    report = check_leakage(clean, size=64, extra=[(extra_with_test_image, ["train"])], max_distance=6)
    report.pairs += check_leakage(leaky, size=64).pairs
    out = tmp_path / "plots" / "pairs.png"
    out.parent.mkdir()
    plot_pairs(report, str(out))
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out) as img:
        width, height = img.size
    assert width > 200 and height > 2 * 200  # two rows of pairs
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.png"]  # no temp file left

    empty = check_leakage(clean, size=64)
    plot_pairs(empty, str(tmp_path / "empty.png"), max_pairs=4)
    with Image.open(tmp_path / "empty.png") as img:
        img.verify()

    # a custom loader replaces reading the shards
    seen = []

    def loader(item):
        seen.append(item.id)
        return jpeg(make_image(1))

    plot_pairs(report, str(tmp_path / "custom.png"), root_images=loader, max_pairs=1)
    assert len(seen) == 2
