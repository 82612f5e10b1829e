"""The search-efficiency and accelerator benchmarks: their smoke runs, as real processes,
write the shared result JSON with sane values (never into benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULT_KEYS = [
    "name",
    "title",
    "goal",
    "goal_met",
    "measured",
    "command",
    "date",
    "machine",
    "smoke",
    "table_md",
    "plots",
    "notes_md",
]


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


def test_search_smoke_writes_runs_result_and_curve_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    proc = _run([sys.executable, "benchmarks/search.py", "--smoke", "--work", str(work), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    search = _load("search")
    data = _result(out / "search.json", "search")
    assert data["goal_met"] is None and "pairs done" in data["measured"]
    assert str(tmp_path) not in data["command"]  # no path outside the repo in a result file

    # One result file per (method, seed), each a search the budget stopped after >= 1 epoch.
    for method in search.METHODS:
        run = json.loads((work / "runs" / f"{method}-seed1.json").read_text())
        assert run["method"] == method and run["seed"] == 1 and run["budget_min"] == search.SMOKE_BUDGET_MIN
        assert run["stopped_by"] == "budget", method
        assert run["epochs"] == len(run["epoch_log"]) >= 1 and run["trials"] >= 1
        # Over by the budget (a little slack for the last epoch's own bookkeeping).
        assert 0 < run["wall_s"] <= 60 * run["budget_min"] + 5, method
        times = [e["t_s"] for e in run["epoch_log"]]
        assert times == sorted(times) and times[-1] <= run["wall_s"]
        assert run["best_val_f1"] == max(e["val_f1"] for e in run["epoch_log"])
        assert 0.0 <= run["test_accuracy"] <= 1.0 and 0.0 <= run["test_macro_f1"] <= 1.0
        assert run["test_images"] > 0 and run["export_s"] >= 0
        assert run["code_version"] and run["machine"] and run["date"].endswith("+00:00")
        assert str(tmp_path) not in json.dumps(run)

    lines = data["table_md"].splitlines()
    assert len(lines) == 2 + len(search.METHODS)
    for method, line in zip(search.METHODS, lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == search.METHODS[method] and cells[1] == "1"
        assert 0.0 <= float(cells[2].split()[0]) <= 1.0  # median test accuracy, then the seeds'
        assert int(cells[5].split()[0]) >= 1  # epochs trained
    assert len(data["plots"]) == 1
    png = Path(data["plots"][0])
    png = png if png.is_absolute() else REPO / png
    assert png.parent == out.resolve() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: only the pair whose result is gone is still to run.
    (work / "runs" / "kt-random-seed1.json").unlink()
    dry = _run([sys.executable, "benchmarks/search.py", "--smoke", "--work", str(work), "--dry-run"], tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.splitlines() == ["kt-random seed 1"]


def test_search_full_run_refuses_without_data_in_one_line(tmp_path):
    env_free = {k: v for k, v in os.environ.items() if k != "FLOWER_EXP_BENCH_DATA"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/search.py", "--work", str(tmp_path / "w"), "--out", str(tmp_path)],
        cwd=REPO,
        env=env_free,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--data" in proc.stderr
    assert not (tmp_path / "search.json").exists()


def test_search_plan_curves_and_goal():
    search = _load("search")
    # Seed-major, the method order rotating per seed.
    assert search.plan([1, 2], ["a", "b", "c"]) == [("a", 1), ("b", 1), ("c", 1), ("b", 2), ("c", 2), ("a", 2)]
    log = [{"t_s": 5.0, "val_f1": 0.2}, {"t_s": 10.0, "val_f1": 0.1}, {"t_s": 20.0, "val_f1": 0.5}]
    curve = search.best_so_far_at(log, [0.0, 5.0, 15.0, 30.0])
    assert math.isnan(curve[0]) and curve[1:] == [0.2, 0.2, 0.5]

    def run(method, seed, acc, f1_at_1s):
        return {
            "method": method,
            "seed": seed,
            "budget_min": 1.0,
            "space_sha256": "x",
            "smoke": False,
            "test_accuracy": acc,
            "test_macro_f1": acc,
            "best_val_f1": f1_at_1s,
            "epochs": 1,
            "trials": 1,
            "wall_s": 60.0,
            "export_s": 1.0,
            "first_trial_end_s": 1.0,
            "epoch_log": [{"t_s": 1.0, "trial": 0, "epoch": 1, "val_f1": f1_at_1s}],
        }

    others = [m for m in search.METHODS if m != search.FLOWER_EXP]
    runs = [run(m, s, 0.70, 0.60) for m in others for s in (1, 2)]
    runs += [run(search.FLOWER_EXP, s, 0.73, 0.65) for s in (1, 2)]
    assert search.summarize(runs)["goal_met"] is None  # 2 seeds: no verdict yet
    runs += [run(m, 3, 0.70, 0.60) for m in others] + [run(search.FLOWER_EXP, 3, 0.73, 0.65)]
    s = search.summarize(runs)
    assert s["goal_met"] is True and s["accuracy_ok"] and s["curve_ok"]
    # A rival's better epoch before flower-exp's first trial ended does not count; after it, it does.
    rival = next(r for r in runs if r["method"] == others[0])
    rival["epoch_log"].insert(0, {"t_s": 0.5, "trial": 0, "epoch": 1, "val_f1": 0.9})
    assert search.summarize(runs)["curve_ok"] is True
    for r in runs:
        if r["method"] == others[0]:
            r["epoch_log"].append({"t_s": 30.0, "trial": 1, "epoch": 1, "val_f1": 0.9})
    s = search.summarize(runs)
    assert s["curve_ok"] is False and s["goal_met"] is False and s["below"][others[0]] > 0
    for r in runs:
        if r["method"] == search.FLOWER_EXP and r["seed"] > 1:
            r["test_accuracy"] = 0.71  # median 0.71 < 0.70 + 2 points
    assert search.summarize(runs)["goal_met"] is False
    with pytest.raises(SystemExit):
        search.check_comparable(runs, budget_min=2.0)


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


def test_search_flags_a_seed_whose_pairs_ran_in_different_sittings():
    search = _load("search")
    runs = [
        {"seed": 1, "date": "2026-12-01T11:40:09+00:00"},
        {"seed": 1, "date": "2026-12-07T19:43:25+00:00"},
        {"seed": 2, "date": "2026-12-07T19:00:00+00:00"},
        {"seed": 2, "date": "2026-12-07T21:10:00+00:00"},
    ]
    assert search.split_seeds(runs) == ["seed 1: 2026-12-01 11:40 - 2026-12-07 19:43"]
    assert search.split_seeds(runs[2:]) == []
