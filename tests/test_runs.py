"""``flower-exp runs``: which runs are listed, the searched parameters as columns, ``--study``.

Runs are written straight to an MLflow store the way train, sweep and best write them (kinds,
tags, params, metrics), so no model is trained here."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import assert_one_line_error
from flower_exp.errors import FlowerExpError
from flower_exp.runs import FIXED_COLUMNS, list_runs, rounded
from flower_exp.tracking import Tracker, TrackingTarget

SPACE = {
    "architecture": {"choices": ["cnn", "densenet121"]},
    "cnn_width": {"choices": [4, 8]},
    "lr_max": {"low": 1e-4, "high": 1e-2, "log": True},
}


def _run(tracker, name, kind, *, study=None, parent=None, suggested=None, params=None, metrics=None, state="finished"):
    tags = {"flower_exp.kind": kind, "flower_exp.state": state}
    if study:
        tags["flower_exp.study"] = study
    if suggested is not None:
        tags["flower_exp.suggested"] = json.dumps(suggested)
    run_id = tracker.start(name, tags, parent)
    resolved = {"architecture": "cnn", "cnn_width": 8, "lr_max": 3e-3, "image_size": 32, **(suggested or {}), **(params or {})}
    if kind in ("train", "trial"):
        tracker.log_params(run_id, resolved)
    elif params:
        tracker.log_params(run_id, params)
    tracker.log_metrics(run_id, metrics or {})
    tracker.end(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project folder's store (created once: MLflow's migrations take seconds) with two
    studies (s1 with a conditional param, s2), a plain train run, an ensemble and a refit."""
    folder = tmp_path_factory.mktemp("runs")
    target = TrackingTarget(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", str(folder / "mlruns" / "artifacts"))
    tracker = Tracker(target, "tiny")
    ids = {}
    ids["s1"] = _run(
        tracker,
        "s1",
        "sweep",
        study="s1",
        params={"search_space": json.dumps(SPACE)},
        metrics={"sweep_best_val_macro_f1_final": 0.9},
    )
    ids["t0"] = _run(
        tracker,
        "trial-0",
        "trial",
        study="s1",
        parent=ids["s1"],
        suggested={"architecture": "cnn", "cnn_width": 4, "lr_max": 0.0023456789},
        metrics={"best_val_macro_f1": 0.9, "best_epoch": 3},
    )
    ids["t1"] = _run(
        tracker,
        "trial-1 (pruned at 2)",
        "trial",
        study="s1",
        parent=ids["s1"],
        state="pruned",
        suggested={"architecture": "densenet121", "lr_max": 0.0001},
        metrics={"best_val_macro_f1": 0.5, "best_epoch": 2, "pruned_at_epoch": 2},
    )
    ids["s2"] = _run(
        tracker, "s2", "sweep", study="s2", params={"search_space": json.dumps({"dropout": {"low": 0, "high": 0.5}})}
    )
    ids["u0"] = _run(
        tracker,
        "trial-0",
        "trial",
        study="s2",
        parent=ids["s2"],
        suggested={"dropout": 0.123456},
        metrics={"best_val_macro_f1": 0.7, "best_epoch": 1},
    )
    ids["train"] = _run(
        tracker,
        "cnn-32px",
        "train",
        params={"lr_max": "0.00123456", "dropout": 0.25},
        metrics={"best_val_macro_f1": 0.8, "best_epoch": 4},
    )
    ids["ens"] = _run(
        tracker, "ensemble-optuna", "ensemble", parent=ids["s1"], study="s1", metrics={"holdout_ensemble_macro_f1": 0.95}
    )
    ids["refit"] = _run(tracker, "refit-cnn-32px", "refit", parent=ids["s1"], params={"refit_of": ids["t0"]})
    return folder, target, ids


def test_runs_of_a_study_show_its_search_space_rounded(store):
    _folder, target, ids = store
    table = list_runs(target, "tiny", study="s1")
    assert table.columns == [*FIXED_COLUMNS, "architecture", "cnn_width", "lr_max"]
    assert table.parent_run_id == ids["s1"]
    # Parent, ensemble and refit are not trials; the pruned trial says so in its name and state.
    assert table.rows == [
        [ids["t0"][:8], "trial-0", "finished", "0.9000", "3", "cnn", "4", "0.00235"],
        [ids["t1"][:8], "trial-1 (pruned at 2)", "pruned", "0.5000", "2", "densenet121", "", "0.0001"],
    ]
    assert len(list_runs(target, "tiny", top=1, study="s1").rows) == 1


def test_runs_without_study_show_every_searched_param_and_train_runs_their_settings(store):
    _folder, target, ids = store
    table = list_runs(target, "tiny")
    assert table.columns == [*FIXED_COLUMNS, "architecture", "cnn_width", "lr_max", "dropout"]
    assert table.parent_run_id is None
    by_run = {row[0]: row for row in table.rows}
    assert [row[0] for row in table.rows] == [ids[k][:8] for k in ("t0", "train", "u0", "t1")]
    assert by_run[ids["train"][:8]][5:] == ["cnn", "8", "0.00123", "0.25"]  # a train run: its params
    assert by_run[ids["u0"][:8]][5:] == ["", "", "", "0.123"]  # a trial: only what was searched


def test_runs_of_plain_train_runs_and_unknown_study(store):
    _folder, target, _ids = store
    other = Tracker(target, "other")
    _run(other, "cnn-32px", "train", metrics={"best_val_macro_f1": 0.6, "best_epoch": 1})
    table = list_runs(target, "other")
    assert table.columns == [*FIXED_COLUMNS, "architecture", "size", "lr_max", "lr_min", "rampup", "sustain", "decay"]
    assert table.rows[0][5:8] == ["cnn", "32", "0.003"]
    with pytest.raises(FlowerExpError, match=r"--study nope: no runs of that study in experiment 'tiny'; studies there: s1, s2"):
        list_runs(target, "tiny", study="nope")
    with pytest.raises(FlowerExpError, match="not a valid study name"):
        list_runs(target, "tiny", study="a' or '1'='1")


def test_rounded():
    assert [rounded(v) for v in ("0.0012345", "128", "-3", 2.0, 1e-5, True, "cnn", "", 7)] == [
        "0.00123",
        "128",
        "-3",
        "2",
        "1e-05",
        "True",
        "cnn",
        "",
        "7",
    ]


def test_runs_command_prints_the_study_table(cli, store, demo_root):
    from typer.testing import CliRunner

    from flower_exp.cli import app

    folder, _target, ids = store
    (folder / "experiments.yaml").write_text(
        yaml.safe_dump({"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root}}})
    )
    result = CliRunner().invoke(
        app, ["--config", str(folder / "experiments.yaml"), "runs", "--study", "s1"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "runs of study s1 (best val_macro_f1 first)" in result.stdout
    header = next(line for line in lines if "best val_macro_f1 " in line and "lr_max" in line)
    columns = [*FIXED_COLUMNS, "architecture", "cnn_width", "lr_max"]
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    assert any("trial-1 (pruned at 2)" in line and " pruned " in line for line in lines)
    assert "ensemble" not in result.stdout and lines[-1] == f"MLflow parent run: {ids['s1']}"
    assert_one_line_error(cli("runs", "--study", "nope", cwd=folder), "--study nope: no runs of that study")
