"""The data commands and `ui` through the real CLI: output, files written, error lines."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from conftest import assert_one_line_error
from servers import free_port, stop_group


def test_demo_then_inspect_default_experiment(cli, tmp_path):
    result = cli("data", "inspect", "--no-sheet", cwd=tmp_path)  # generates the demo data on first use
    assert result.returncode == 0, result.stderr
    assert "generated demo dataset" in result.stderr
    for split in ("train", "val", "test"):
        assert split in result.stdout
    assert (tmp_path / "data" / "demo" / "classes.txt").is_file()
    again = cli("data", "demo", cwd=tmp_path)
    assert_one_line_error(again, str(tmp_path / "data" / "demo"), "--force")


def test_demo_out_and_inspect_writes_contact_sheet(cli, tmp_path):
    out = tmp_path / "mini"
    result = cli("data", "demo", "--out", str(out), "--classes", "3", "--per-class", "10", "--sizes", "32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 classes" in result.stdout
    sheet = tmp_path / "sheet.png"
    result = cli("data", "inspect", str(out), "--sheet", str(sheet), "--samples", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sheet.read_bytes().startswith(b"\x89PNG")
    assert_one_line_error(cli("data", "demo", "--out", str(tmp_path / "x"), "--classes", "1"), "classes")
    assert not (tmp_path / "x").exists()


def test_inspect_corrupt_shard_exit_2_or_skip(cli, tmp_path, demo_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(demo_root, root)
    shard = sorted((root / "tfrecords-jpeg-32x32" / "train").glob("*.tfrec"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = cli("data", "inspect", str(root), "--size", "32", "--no-sheet")
    assert_one_line_error(result, shard.name, "record ", "corrupt or truncated")
    skipped = cli("data", "inspect", str(root), "--size", "32", "--no-sheet", "--skip-corrupt")
    assert skipped.returncode == 0, skipped.stderr
    assert shard.name in skipped.stdout


def test_import_folder_reports_bad_image(cli, tmp_path):
    from PIL import Image

    src = tmp_path / "photos"
    for c, colour in enumerate(["red", "green", "blue"]):
        (src / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + i, 40), colour).rotate(i * 7).save(src / f"class{c}" / f"{i}.jpg", quality=90 - i)
    (src / "class0" / "broken.jpg").write_text("not an image")
    result = cli("data", "import-folder", str(src), "--out", str(tmp_path / "ds"), "--sizes", "32", "--shards", "1")
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "skipped" in result.stderr
    assert (tmp_path / "ds" / "tfrecords-jpeg-32x32" / "train").is_dir()
    assert_one_line_error(cli("data", "import-folder", str(src), "--out", str(tmp_path / "ds"), "--sizes", "32"), "--force")


def test_check_leakage_clean_and_leaking_extra_data(cli, tmp_path, demo_root):
    from flower_exp.data import records

    extra = tmp_path / "extra"
    test_records = [rec for shard in records.shard_files(demo_root, 32, "test") for _, rec in records.iter_shard(shard)]
    planted = [records.Record(rec.image, "x" + rec.id[1:], 0) for rec in test_records[:3]]
    records.write_split(str(extra), 32, "train", planted, 1)
    records.write_split(str(extra), 32, "val", planted[:1], 1)
    config = {
        "experiments": {
            "clean": {"data_dir": demo_root, "image_size": 32},
            "leaky": {"data_dir": demo_root, "image_size": 32, "extra_data": [{"path": str(extra)}]},
        }
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(config))
    clean = cli("data", "check-leakage", "-e", "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "no leakage found" in clean.stdout
    leaky = cli("data", "check-leakage", "-e", "leaky", cwd=tmp_path)
    assert leaky.returncode == 1, leaky.stderr
    assert "leaking pairs" in leaky.stdout
    assert (tmp_path / "leakage-leaky.png").read_bytes().startswith(b"\x89PNG")
    refused = cli("train", "-e", "leaky", cwd=tmp_path)
    assert_one_line_error(refused, str(extra), "--allow-leakage")


@pytest.mark.slow
def test_ui_serves_on_loopback(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flower_exp.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        body = None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert body is not None, "MLflow UI did not answer"
        assert (tmp_path / "mlruns" / "mlflow.db").exists()
    finally:
        # The server forks gunicorn workers: stop the whole session's process group.
        stop_group(proc, timeout=20)
