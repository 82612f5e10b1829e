"""Benchmark scripts (pipeline, overhead, memory, startup), their shared result format, the
report renderer and run_all: each script runs for real with ``--smoke`` into tmp_path (never
benchmarks/results) and must write a well-formed result; no assertion on time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402
import report  # noqa: E402
import run_all  # noqa: E402


def run_smoke(name: str, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GCS_DS_PATH")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", FLOWER_EXP_BENCH_CACHE=str(out / "cache"))
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out / (name + '.json')}" in proc.stdout
    result = json.loads((out / f"{name}.json").read_text())
    assert list(result) == list(common.RESULT_KEYS)  # exactly the shared keys, in order
    assert result["name"] == name and result["smoke"] is True and result["goal_met"] is None
    assert result["command"] == f".venv/bin/python benchmarks/{name}.py --smoke --out {out}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", result["date"])
    assert "cores" in result["machine"] and "TF " in result["machine"]
    assert result["title"] and result["goal"] and result["measured"] and result["notes_md"]
    assert result["table_md"].startswith("| ") and "|---" in result["table_md"]
    assert result["plots"] == []  # smoke runs draw nothing
    assert not list(REPO.glob("benchmarks/results/*smoke*"))
    return result


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def test_pipeline_smoke(tmp_path):
    result = run_smoke("pipeline", tmp_path)
    assert "at 32 px" in result["measured"]
    row = next(line for line in result["table_md"].splitlines() if line.startswith("| 32 px"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ceiling, pipe, ratio = float(cells[1]), float(cells[2]), float(cells[3])
    low, high = numbers(cells[4])
    assert ceiling > 0 and pipe > 0 and low <= ratio <= high  # the median lies within the rounds' range
    assert (tmp_path / "cache").is_dir()  # demo data generated outside the repo


def test_overhead_smoke(tmp_path):
    result = run_smoke("overhead", tmp_path)
    ratio = numbers(result["measured"].split("after")[0])[0]
    assert 0 < ratio < 100
    # Every harness callback is costed, and both variants' validation passes are timed.
    for label in ("epoch timer", "NaN guard", "LR scheduler", "best epoch + early stopping", "MLflow logger"):
        assert f"| {label}" in result["table_md"]
    logger_row = next(line for line in result["table_md"].splitlines() if line.startswith("| MLflow logger"))
    assert numbers(logger_row.split("|")[3])[0] > 0
    validation = next(line for line in result["table_md"].splitlines() if line.startswith("Validation pass"))
    bare_ms, trial_ms = numbers(validation.split("bare")[1])[0], numbers(validation.split("trial")[1])[0]
    assert bare_ms > 0 and trial_ms > 0


def test_memory_smoke(tmp_path):
    result = run_smoke("memory", tmp_path)
    first, last = (float(x) for x in re.findall(r"(\d+) MiB after", result["measured"]))
    assert 100 < first < 20000 and 100 < last < 20000  # MiB of a process that imported TensorFlow
    assert "after trial 2" in result["measured"]
    assert result["table_md"].count("| complete |") == 2


def test_startup_smoke(tmp_path):
    result = run_smoke("startup", tmp_path)
    assert result["measured"].endswith("TensorFlow imported: no")
    for command in ("python -c pass", "flower-exp --help", "flower-exp status"):
        assert f"| `{command}` |" in result["table_md"]
    assert "flower_exp.cli" in result["table_md"]  # -X importtime was parsed


def test_write_result_checks_keys(tmp_path):
    fields = dict(name="x", title="X", goal="g", goal_met=None, measured="m", smoke=True, table_md="")
    path = common.write_result(tmp_path, **fields)
    written = json.loads(path.read_text())
    assert path == tmp_path / "x.json" and written["plots"] == [] and written["machine"] == common.machine_info()
    with pytest.raises(ValueError, match="missing \\['goal'\\]"):
        common.write_result(tmp_path, **{k: v for k, v in fields.items() if k != "goal"})
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        common.write_result(tmp_path, **fields, extra=1)
    assert common.median([3, 1, 2]) == 2


def test_finish_plots_full_runs_only(tmp_path, capsys):
    fields = dict(name="x", title="X", goal="g", measured="m 1.0", table_md="", notes_md="n")
    drawn = []
    for smoke in (True, False):
        args = common.parse_args("x", ["--out", str(tmp_path / str(smoke))] + (["--smoke"] if smoke else []))
        path = common.finish(args, goal_met=True, draw=lambda p: (drawn.append(p), p.write_bytes(b"png")), **fields)
        written = json.loads(path.read_text())
        assert path == args.out / "x.json" and written["smoke"] is smoke
        assert written["goal_met"] is (None if smoke else True)  # a smoke run meets no goal
        assert f"m 1.0\nwrote {path}\n" in capsys.readouterr().out
    assert drawn == [(tmp_path / "False" / "x.png").resolve()]  # the smoke run drew nothing
    assert written["plots"] == [str(drawn[0])]  # outside the repo: the absolute path


def result(name: str, **changes) -> dict:
    base = dict(
        name=name,
        title=f"Title {name}",
        goal=f"goal of {name}",
        goal_met=True,
        measured=f"{name} 0.97",
        command=f".venv/bin/python benchmarks/{name}.py",
        date="2026-01-01T00:00:00+00:00",
        machine="CPU, 2 cores",
        smoke=False,
        table_md="| a | b |\n|---|---|\n| 1 | 2 |",
        plots=[],
        notes_md=f"notes of {name}",
    )
    return {**base, **changes}


def test_report_renders_every_result(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "pipeline.png").write_bytes(b"png")
    for r in (
        result("zzz_other"),
        result("startup", goal_met=False, measured="x | y"),
        result("pipeline", plots=[str(results / "pipeline.png")], smoke=True, goal_met=None),
    ):
        (results / f"{r['name']}.json").write_text(json.dumps(r))
    output = tmp_path / "BENCHMARKS.md"
    report.main(["--results", str(results), "--output", str(output)])
    text = output.read_text()
    assert "run_all.py" in text and "noisy" in text and "within one run" in text  # the intro
    summary = text.split("## Summary")[1].split("\n## ")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| [")]
    # Known benchmarks in issue order, others after; met/not met/not applicable; pipes escaped.
    assert [re.search(r"\[(.*?)\]", row).group(1) for row in rows] == ["Title pipeline", "Title startup", "Title zzz_other"]
    assert rows[0].endswith("| n/a |") and "(smoke run)" in rows[0]
    assert rows[1].endswith("| **no** |") and "x \\| y" in rows[1]
    assert rows[2].endswith("| yes |")
    for name in ("pipeline", "startup", "zzz_other"):
        section = text.split(f"## Title {name}")[1].split("\n## ")[0]
        for part in (
            f"goal of {name}",
            f"`.venv/bin/python benchmarks/{name}.py`",
            "2026-01-01T00:00:00+00:00",
            "CPU, 2 cores",
            "| 1 | 2 |",
            f"notes of {name}",
        ):
            assert part in section, (name, part)
    assert "![Title pipeline](results/pipeline.png)" in text  # relative to the markdown file


def test_report_with_no_results_and_bad_file(tmp_path):
    output = tmp_path / "B.md"
    report.main(["--results", str(tmp_path), "--output", str(output)])
    assert "No results yet" in output.read_text()
    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken"}))
    with pytest.raises(SystemExit, match="broken.json: not a benchmark result"):
        report.main(["--results", str(tmp_path), "--output", str(output)])


def test_run_all_commands(tmp_path, monkeypatch):
    smoke = dict(run_all.commands(True, tmp_path))
    assert list(smoke)[:2] == ["pipeline", "overhead"] and {"memory", "startup", "search"} <= set(smoke)
    # The real search benchmark takes hours over several sittings: never part of a full run_all.
    assert "search" not in dict(run_all.commands(False, tmp_path))
    for name in ("pipeline", "overhead", "memory", "startup"):
        assert smoke[name][1:] == [str(REPO / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(tmp_path)]
    if (REPO / "benchmarks" / "gpu.sh").exists():  # its CPU check runs in smoke mode
        assert smoke["gpu"] == ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(tmp_path)]
        monkeypatch.setattr(run_all.shutil, "which", lambda _name: None)
        assert "gpu" not in dict(run_all.commands(False, tmp_path))  # full run needs a GPU
