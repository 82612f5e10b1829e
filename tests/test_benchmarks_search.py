"""The search-efficiency and accelerator benchmarks: their smoke runs, as real processes,
write the shared result JSON with sane values (never into benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULT_KEYS = ["name", "title", "goal", "goal_met", "measured", "command", "date", "machine",
               "smoke", "table_md", "plots", "notes_md"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # The demo data the benchmarks generate goes to a cache dir; keep the test's private.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)


def _result(path: Path, name: str) -> dict:
    data = json.loads(path.read_text())
    assert list(data) == RESULT_KEYS
    assert data["name"] == name
    assert data["smoke"] is True and data["goal_met"] is None
    assert "--smoke" in data["command"] and data["date"].endswith("+00:00")
    for key in ("title", "goal", "measured", "machine", "table_md", "notes_md"):
        assert isinstance(data[key], str) and data[key].strip(), key
    return data


def test_search_smoke_writes_result_and_curve(tmp_path):
    out = tmp_path / "results"
    proc = _run([sys.executable, "benchmarks/search.py", "--smoke", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _result(out / "search.json", "search")
    search = _load("search")
    lines = data["table_md"].splitlines()
    assert len(lines) == 2 + len(search.METHODS)
    for method, line in zip(search.METHODS, lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == method
        assert 0.0 <= float(cells[1]) <= 1.0  # best F1 at budget
        # Every method trained exactly the smoke budget: the epoch counting and the stop work.
        assert cells[-1] == str(search.SMOKE.budget)
        assert int(cells[-2]) >= 1
    assert len(data["plots"]) == 1
    png = Path(data["plots"][0])
    png = png if png.is_absolute() else REPO / png
    assert png.parent == out.resolve() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_curve_and_target_maths():
    search = _load("search")
    assert search.best_so_far([0.2, 0.1, 0.5], 5) == [0.2, 0.2, 0.5, 0.5, 0.5]
    assert search.epochs_to([0.2, 0.2, 0.5], 0.5) == 3
    assert search.epochs_to([0.2, 0.2, 0.5], 0.6) is None
    log = search.EpochLog(budget=2)
    log.epoch(0.3)
    with pytest.raises(search.BudgetSpent):
        log.epoch(0.4)
    assert log.scores == [0.3, 0.4]


def test_gpu_smoke_writes_result_on_cpu(tmp_path):
    out = tmp_path / "results"
    proc = _run(["bash", "benchmarks/gpu.sh", "--smoke", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _result(out / "gpu.json", "gpu")
    rows = data["table_md"].splitlines()[2:]
    gpu = _load("gpu")
    assert [r.strip("|").split("|")[0].strip() for r in rows] == list(gpu.SMOKE.models)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        synthetic, tfrecord, ratio, pipeline_alone, gflops = map(float, cells[1:6])
        assert synthetic > 0 and tfrecord > 0 and pipeline_alone > 0 and gflops > 0
        assert ratio == pytest.approx(tfrecord / synthetic, abs=0.01)
    assert data["plots"] == []


def test_gpu_peak_table_covers_common_gpus():
    gpu = _load("gpu")
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.peak_flops("NVIDIA L4") == 121e12
    assert gpu.peak_flops("Tesla T4") == 65e12
    assert gpu.peak_flops("NVIDIA L40S") == 362e12  # the longest key wins over "L4"
    assert gpu.peak_flops(None) is None and gpu.peak_flops("Unknown Card") is None


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_sh_without_gpu_refuses_in_one_line(tmp_path):
    proc = _run(["bash", "benchmarks/gpu.sh", "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--smoke" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()
