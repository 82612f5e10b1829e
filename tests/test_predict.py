"""Prediction from an export: refused exports, files, URLs (local server), TTA, the test split."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from flower_exp import models
from flower_exp.errors import DataError, FlowerExpError
from flower_exp.export import ExportMember, write_export
from flower_exp.export_format import load_export
from flower_exp.fetch import fetch_image
from flower_exp.predictor import load_image, predict_arrays, predict_sources, predict_test
from servers import QuietHandler, http_server

NUM_CLASSES = 4  # the demo_root fixture's class count
CLASSES = ["c0", "c1", "c2", "c3"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A two-member export (cnn at 32 px and at 64 px, untrained)."""
    folder = tmp_path_factory.mktemp("predict-models")
    members = []
    for run_id, size, weight in (("small", 32, 0.25), ("large", 64, 0.75)):
        model = models.create_model("cnn", num_classes=NUM_CLASSES, image_size=size, cnn_width=4, cnn_depth=1)
        path = folder / f"{run_id}.keras"
        model.save(path)
        members.append(ExportMember(run_id, "cnn", size, "unit", weight, str(path), {"val_macro_f1": 0.5}))
    out = tmp_path_factory.mktemp("predict-exports") / "exp"
    write_export(str(out), members=members, class_names=CLASSES, info={"experiment": "demo"})
    return out


@pytest.fixture(scope="module")
def ens(export_dir):
    return load_export(str(export_dir))


@pytest.fixture
def copy_export(export_dir, tmp_path):
    """A private copy of the export to tamper with; returns (folder, ensemble.json document)."""

    def make() -> tuple[Path, dict]:
        target = tmp_path / "copy"
        shutil.copytree(export_dir, target)
        return target, json.loads((target / "ensemble.json").read_text())

    return make


def write_doc(folder: Path, doc: dict) -> None:
    (folder / "ensemble.json").write_text(json.dumps(doc))


def jpeg_bytes(width: int = 80, height: int = 60, seed: int = 0, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions (a decompression bomb's header) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------- load_export refusals


def test_load_export_reads_members(ens, export_dir):
    assert ens.root == str(export_dir)
    assert ens.class_names == CLASSES
    assert [(m.run_id, m.image_size, m.weight) for m in ens.members] == [("small", 32, 0.25), ("large", 64, 0.75)]
    assert ens.image_sizes == [32, 64]


def test_refuses_missing_and_malformed_json(copy_export, tmp_path):
    folder, doc = copy_export()
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(tmp_path / "nowhere"))
    assert_one_line(exc, "does not exist")

    (folder / "ensemble.json").write_text('{"format_version": 1, "class_names": [')
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, "ensemble.json: malformed JSON (line 1")

    (folder / "ensemble.json").write_text(json.dumps(doc).replace('"weight": 0.25', '"weight": NaN'))
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, "ensemble.json: malformed JSON (NaN is not valid JSON)")

    (folder / "ensemble.json").write_text('{"format_version": 1, "format_version": 1}')
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, "duplicate key 'format_version'")

    (folder / "ensemble.json").unlink()
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, f"{folder / 'ensemble.json'}: missing; ", "not a flower-exp export")


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
        (lambda d: d["members"][0].update(shape="round"), "members.0.shape: Extra inputs are not permitted"),
        (lambda d: d.update(format_version=2), "unsupported format_version 2 (this flower-exp reads 1)"),
        (lambda d: d.pop("format_version"), "format_version is missing"),
        (lambda d: d["members"][0].update(image_size="32"), "members.0.image_size: Input should be a valid integer"),
        (lambda d: d["members"][0].update(normalization="imagenet"), "members.0.normalization"),
        (lambda d: d["members"][0].update(weight=0.5), "weights sum to 1.25; they must sum to 1"),
        (lambda d: d["members"][0].update(weight=-0.25, run_id="small"), "members.0.weight"),
        (lambda d: d.update(class_names=["a", "b", "c"]), "model outputs 4 classes but ensemble.json lists 3 class names"),
        (lambda d: d["members"][1].update(run_id="small"), "run ids must be unique"),
        (lambda d: d["members"][0].update(image_size=48), "model input is (32, 32, 3) but ensemble.json says image_size 48"),
    ],
)
def test_refuses_bad_documents(copy_export, change, fragment):
    folder, doc = copy_export()
    change(doc)
    write_doc(folder, doc)
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, fragment)


def test_refuses_member_paths_outside_the_export(copy_export, tmp_path):
    folder, doc = copy_export()
    outside = tmp_path / "x.keras"
    shutil.copy(folder / "members" / "small.keras", outside)  # a real model: only the path is wrong
    cases = [
        ("../x.keras", "member path '../x.keras' leaves the export folder"),
        ("members/../../x.keras", "leaves the export folder"),
        (str(outside), "is absolute; it must be relative"),
        ("members/missing.keras", "member file members/missing.keras is missing from the export"),
    ]
    (folder / "members" / "link.keras").symlink_to(outside)
    cases.append(("members/link.keras", "resolves outside the export folder (symlink?)"))
    for path, fragment in cases:
        doc["members"][0]["path"] = path
        write_doc(folder, doc)
        with pytest.raises(FlowerExpError) as exc:
            load_export(str(folder))
        assert_one_line(exc, str(folder / "ensemble.json"), fragment)


def test_refuses_lambda_layer_member(copy_export, tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))
    folder, doc = copy_export()
    model.save(folder / "members" / "small.keras")  # replaces a member file in place
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, "small.keras: cannot load model safely")

    (folder / "members" / "small.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FlowerExpError) as exc:
        load_export(str(folder))
    assert_one_line(exc, "small.keras")


# --------------------------------------------------------------------------- files


def test_predict_files_bad_items_do_not_stop_the_rest(ens, tmp_path):
    good = tmp_path / "flower.jpg"
    good.write_bytes(jpeg_bytes(90, 50))
    png = tmp_path / "flower.png"
    png.write_bytes(jpeg_bytes(40, 40, seed=2, fmt="PNG"))
    text = tmp_path / "notes.jpg"
    text.write_text("this is text, not a JPEG")
    sources = [
        str(good),
        str(text),
        str(tmp_path / "missing.jpg"),
        str(tmp_path),
        "ftp://127.0.0.1/x.jpg",
        "file:///etc/passwd",
        str(png),
    ]
    results = predict_sources(ens, sources, top=3)
    assert [r.source for r in results] == sources
    errors = [r.error for r in results]
    assert errors[0] is None and errors[-1] is None
    assert errors[1] == "not an image (unrecognised format)"
    assert errors[2] == "no such file"
    assert errors[3] == "not a file"
    assert errors[4] == "unsupported URL scheme ftp:// (http/https only)"
    assert errors[5] == "unsupported URL scheme file:// (http/https only)"
    for r in (results[0], results[-1]):
        assert len(r.top) == 3
        probs = [p for _c, p in r.top]
        assert probs == sorted(probs, reverse=True)
        assert {c for c, _p in r.top} <= set(CLASSES)
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert r.top[0] == (CLASSES[int(np.argmax(r.probabilities))], max(r.probabilities))
    # Same image, same answer as predicting its arrays directly.
    arrays = {s: load_image(good.read_bytes(), s)[None] for s in (32, 64)}
    np.testing.assert_allclose(results[0].probabilities, predict_arrays(ens, arrays)[0], atol=1e-6)
    with pytest.raises(FlowerExpError, match="top must be >= 1"):
        predict_sources(ens, [str(good)], top=0)


def test_load_image_crops_center_and_refuses_non_images():
    from PIL import Image

    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)
    wide[:, 20:40] = (0, 255, 0)
    wide[:, 40:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    out = load_image(buf.getvalue(), 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out == (0, 255, 0)).all()  # the green middle third

    gray = io.BytesIO()
    Image.new("L", (10, 10), 128).save(gray, "PNG")
    assert load_image(gray.getvalue(), 4).shape == (4, 4, 3)

    with pytest.raises(FlowerExpError, match="not an image"):
        load_image(b"hello, I am text", 32)
    # Both refused from the header, before decoding: ours (max_pixels), then Pillow's own limit.
    with pytest.raises(FlowerExpError, match=r"10000x10000 = 100000000 pixels, above the limit of 40000000"):
        load_image(png_header_only(10_000, 10_000), 32)
    with pytest.raises(FlowerExpError, match="refused as a decompression bomb"):
        load_image(png_header_only(100_000, 100_000), 32, max_pixels=10**12)
    with pytest.raises(FlowerExpError, match="above the limit of 100"):
        load_image(jpeg_bytes(20, 20), 32, max_pixels=100)


def test_tta(ens):
    from PIL import Image

    rng = np.random.default_rng(5)
    half = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    buf = io.BytesIO()
    Image.fromarray(symmetric).save(buf, "PNG")
    data = buf.getvalue()
    arrays = {s: load_image(data, s)[None] for s in (32, 64)}
    for a in arrays.values():
        assert (a == a[:, :, ::-1]).all()  # still symmetric after crop and resize
    np.testing.assert_allclose(predict_arrays(ens, arrays, tta=True), predict_arrays(ens, arrays), atol=1e-6)

    # On any image TTA is the mean of the image and its mirror.
    arrays = {s: load_image(jpeg_bytes(70, 50, seed=3), s)[None] for s in (32, 64)}
    flipped = {s: a[:, :, ::-1] for s, a in arrays.items()}
    expected = (predict_arrays(ens, arrays) + predict_arrays(ens, flipped)) / 2
    np.testing.assert_allclose(predict_arrays(ens, arrays, tta=True), expected, atol=1e-6)


# --------------------------------------------------------------------------- URLs


class _Handler(QuietHandler):
    image = b""

    def do_GET(self):  # noqa: N802 - http.server API
        path = self.path
        if path == "/flower.jpg":
            self.reply(200, self.image)
        elif path == "/text.jpg":
            self.reply(200, b"<html>not an image</html>", "text/html")
        elif path == "/huge":
            self.reply(200, b"x" * 100, length=10**12)  # claims a terabyte
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(50):
                    block = b"y" * 1000
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif path == "/slow":
            time.sleep(1.5)
            self.reply(200, self.image)
        elif path == "/drip":  # headers at once, then the body a byte every 0.5 s
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.drip(b"x" * 60)
        elif path == "/drip-headers":  # the status line, then a header a byte every 0.5 s
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.drip(b"X-Slow: " + b"a" * 52)
        elif path == "/to-file":
            self.reply(302, b"", "text/plain", location="file:///etc/passwd")
        elif path == "/to-flower":
            self.reply(301, b"", "text/plain", location="/flower.jpg")
        elif path == "/big.png":
            self.reply(200, png_header_only(10_000, 10_000), "image/png")
        elif path == "/bomb.png":
            self.reply(200, png_header_only(100_000, 100_000), "image/png")
        else:
            self.reply(404, b"not found", "text/plain")

    def drip(self, data: bytes) -> None:
        """``data`` a byte every 0.5 s (30 s at most: a regressed client fails, it does not hang)."""
        for byte in data:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client gave up, as it should
                return
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    _Handler.image = jpeg_bytes(120, 90, seed=7)
    with http_server(_Handler) as url:
        yield url


def test_fetch_valid_image_and_redirect(server):
    assert fetch_image(f"{server}/flower.jpg") == _Handler.image
    assert fetch_image(f"{server}/to-flower") == _Handler.image


@pytest.mark.parametrize(
    "path,kwargs,fragment",
    [
        ("/missing.jpg", {}, "HTTP 404"),
        ("/text.jpg", {}, "not an image"),
        ("/huge", {}, "1000000000000 bytes is above the limit of 20971520 bytes; not downloaded"),
        ("/chunked", {"max_bytes": 10_000}, "body exceeds the limit of 10000 bytes; download stopped"),
        ("/to-file", {}, "redirect to file:///etc/passwd refused (http/https only)"),
        ("/big.png", {}, "10000x10000 = 100000000 pixels, above the limit of 40000000"),
        ("/bomb.png", {}, "refused as a decompression bomb"),
    ],
)
def test_fetch_refusals(server, path, kwargs, fragment):
    url = f"{server}{path}"
    started = time.monotonic()
    with pytest.raises(FlowerExpError) as exc:
        fetch_image(url, **kwargs)
    assert_one_line(exc, url, fragment)
    assert time.monotonic() - started < 1.0  # refused up front, nothing slow read


def test_fetch_timeout(server):
    started = time.monotonic()
    with pytest.raises(FlowerExpError) as exc:
        fetch_image(f"{server}/slow", timeout=0.3)
    assert_one_line(exc, "/slow: timed out after 0.3 s")
    assert time.monotonic() - started < 1.2


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_fetch_from_a_dripping_server_stops_at_the_deadline(server, path):
    """A byte every 0.5 s never trips a socket timeout; the total deadline must still hold."""
    started = time.monotonic()
    with pytest.raises(FlowerExpError) as exc:
        fetch_image(f"{server}{path}", timeout=2.0)
    assert_one_line(exc, f"{path}: timed out after 2 s")
    assert time.monotonic() - started < 10  # liveness only (was: until the 1000-byte body or 64 KiB arrived)


def test_local_file_over_the_size_cap_is_refused_before_reading(tmp_path):
    from flower_exp.fetch import MAX_BYTES
    from flower_exp.predictor import read_source

    sparse = tmp_path / "huge.jpg"
    sparse.touch()
    os.truncate(sparse, 3 * 2**30)  # 3 GB that cost no disk and must not be read into memory
    with pytest.raises(FlowerExpError) as exc:
        read_source(str(sparse))
    assert_one_line(exc, f"{sparse}: 3221225472 bytes is above the limit of {MAX_BYTES} bytes; not read")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA", "gopher://x"])
def test_fetch_refuses_other_schemes(url):
    with pytest.raises(FlowerExpError) as exc:
        fetch_image(url)
    assert_one_line(exc, "only http(s) URLs are fetched")


def test_predict_urls(ens, server):
    sources = [f"{server}/flower.jpg", f"{server}/missing.jpg", f"{server}/text.jpg"]
    results = predict_sources(ens, sources, top=2)
    assert results[0].error is None and len(results[0].top) == 2
    assert results[1].error == "HTTP 404 Not Found"
    assert results[2].error.startswith("not an image")
    # A custom fetcher (e.g. with other limits) is used for URLs only.
    seen = []
    results = predict_sources(ens, [f"{server}/anything"], fetch=lambda url: seen.append(url) or _Handler.image)
    assert seen == [f"{server}/anything"] and results[0].error is None


# --------------------------------------------------------------------------- test split


def test_predict_test_writes_submission_and_scores(ens, demo_root, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    path, score = predict_test(ens, demo_root, str(out), batch_size=7)
    assert path == str(out)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["id", "label"]
    with open(Path(demo_root) / "test_labels.csv") as fh:
        truth = list(csv.reader(fh))[1:]
    assert [r[0] for r in rows[1:]] == [t[0] for t in truth]  # every test id, stored order
    assert all(r[1].isdigit() and 0 <= int(r[1]) < NUM_CLASSES for r in rows[1:])
    assert score is not None and 0.0 <= score <= 1.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]  # no temp file left

    # Same predictions as batch size 64 with TTA on; an explicit labels file; no labels.
    path2, score2 = predict_test(
        ens, demo_root, str(tmp_path / "tta.csv"), tta=True, labels_csv=str(Path(demo_root) / "test_labels.csv")
    )
    assert 0.0 <= score2 <= 1.0
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("id,label\nnot-an-id,0\n")
    with pytest.raises(FlowerExpError, match="no label for"):
        predict_test(ens, demo_root, str(tmp_path / "x.csv"), labels_csv=str(bad_labels))

    bare = tmp_path / "bare"
    shutil.copytree(demo_root, bare, ignore=shutil.ignore_patterns("test_labels.csv"))
    _path, none_score = predict_test(ens, str(bare), str(tmp_path / "bare.csv"))
    assert none_score is None
    assert (tmp_path / "bare.csv").read_text() == out.read_text()


def test_predict_test_on_damaged_shard_names_it_and_writes_nothing(ens, demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    shard = sorted((data / f"tfrecords-jpeg-{ens.members[0].image_size}x{ens.members[0].image_size}" / "test").glob("*.tfrec"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "sub" / "submission.csv"
    with pytest.raises(DataError, match=rf"^{shard}: record \d+: corrupt or truncated shard"):
        predict_test(ens, str(data), str(out))
    assert not out.exists()
