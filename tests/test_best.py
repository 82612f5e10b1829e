"""`best`: run selection, honest ensemble run in MLflow, refit, export, and predict on it."""

from __future__ import annotations

import csv
import json
import shutil
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error
from flower_exp.best import BestOptions, run_best, select_runs
from flower_exp.config import load_experiment
from flower_exp.errors import FlowerExpError
from flower_exp.tracking import Tracker, TrackingTarget
from flower_exp.train import run

TINY = {
    "image_size": 32,
    "batch_size_per_replica": 16,
    "shuffle_buffer": 64,
    "epochs": 2,
    "cnn_depth": 2,
    "lr_rampup_epochs": 0,
    "lr_sustain_epochs": 1,
    "lr_max": 3e-3,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """Three finished runs (two cnn widths, one at 64 px) in a project's MLflow store."""
    project = tmp_path_factory.mktemp("best")
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY}}}
    (project / "experiments.yaml").write_text(yaml.safe_dump(config))
    (project / "mlruns").mkdir()
    tracker = Tracker(
        TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny"
    )
    for overrides in (["cnn_width=4"], ["cnn_width=8"], ["cnn_width=8", "image_size=64", "seed=7"]):
        run(load_experiment(config=project, overrides=overrides), tracker=tracker, progress=None)
    return project, tracker


def test_select_runs_orders_by_metric_and_diversifies(trained):
    project, tracker = trained
    runs = select_runs(tracker, study=None, top=3)
    assert len(runs) == 3
    assert [r.score for r in runs] == sorted((r.score for r in runs), reverse=True)
    assert len(select_runs(tracker, study=None, top=3, diverse=True)) == 1  # all are cnn
    with pytest.raises(FlowerExpError, match="no finished runs"):
        select_runs(tracker, study="nope", top=3)


def test_best_logs_ensemble_refits_exports_and_predicts(trained, cli, tmp_path):
    project, tracker = trained
    out = tmp_path / "export"
    result = run_best(
        BestOptions(config=project / "experiments.yaml", top=3, trials=15, export=str(out), refit=True, force_ensemble=True),
        log=lambda m: None,
    )
    report = result.report
    assert 0.0 <= report.holdout_ensemble <= 1.0 and 0.0 <= report.holdout_best_single <= 1.0
    ens = tracker.client.get_run(result.ensemble_run_id)
    assert ens.data.tags["flower_exp.kind"] == "ensemble" and ens.info.status == "FINISHED"
    assert ens.data.metrics["holdout_ensemble_macro_f1"] == pytest.approx(report.holdout_ensemble)
    artifacts = {a.path for a in tracker.client.list_artifacts(result.ensemble_run_id, "ensemble-report")}
    assert {"ensemble-report/confusion_matrix.png", "ensemble-report/weight_search_trials.csv"} <= artifacts
    # --refit: one new run per exported member, trained on train+val, linked to its original.
    assert set(result.refit_runs) == set(result.exported_members)
    for original, refit_id in result.refit_runs.items():
        refit_run = tracker.client.get_run(refit_id)
        assert refit_run.data.tags["flower_exp.kind"] == "refit"
        assert refit_run.data.tags["flower_exp.refit_of"] == original
        assert refit_run.data.params["train_split"] == "train+val"
    manifest = json.loads((out / "ensemble.json").read_text())
    assert sum(m["weight"] for m in manifest["members"]) == pytest.approx(1.0)
    assert {m["run_id"] for m in manifest["members"]} == set(result.refit_runs.values())
    assert manifest["holdout"]["ensemble_macro_f1"] == pytest.approx(report.holdout_ensemble)

    sub = tmp_path / "submission.csv"
    predicted = cli("predict", str(out), "--test", "--out", str(sub), cwd=project, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["id", "label"] and len(rows) > 1
    assert "test macro-F1" in predicted.stdout

    again = cli("best", "--top", "1", "--export", str(out), cwd=project)
    assert_one_line_error(again, str(out), "--force")
    nothing = cli("predict", str(out), cwd=project)
    assert_one_line_error(nothing, "nothing to predict")


def _artifact_dir(tracker, run_id: str) -> Path:
    return Path(urllib.parse.urlparse(tracker.client.get_run(run_id).info.artifact_uri).path)


@contextmanager
def _hidden(folder: Path, tmp_path: Path):
    """``folder`` moved away for the block (the module's trained runs are shared), then back."""
    away = tmp_path / f"hidden-{folder.name}"
    shutil.move(folder, away)
    try:
        yield
    finally:
        shutil.move(away, folder)


def test_export_with_a_deleted_model_artifact_fails_the_ensemble_run(trained, tmp_path):
    project, tracker = trained
    best = select_runs(tracker, study=None, top=1)[0]
    out = tmp_path / "export"
    with _hidden(_artifact_dir(tracker, best.run_id) / "model", tmp_path), pytest.raises(FlowerExpError) as exc:
        run_best(BestOptions(config=project / "experiments.yaml", top=1, method="mean", export=str(out)), log=lambda m: None)
    assert str(exc.value).startswith(f"run {best.run_id}: artifact model/model.keras cannot be read (")
    assert "\n" not in str(exc.value) and not out.exists()
    ensemble = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`flower_exp.kind` = 'ensemble'", order_by=["attributes.start_time DESC"], max_results=1
    )[0]
    assert ensemble.info.status == "FAILED" and ensemble.data.tags["flower_exp.state"] == "failed"


def test_best_cli_user_errors_are_one_line(trained, cli):
    project, tracker = trained
    best = select_runs(tracker, study=None, top=1)[0]
    with _hidden(_artifact_dir(tracker, best.run_id) / "val_probs.npz", project):
        deleted = cli("best", "--top", "1", cwd=project)
    # After the "selected: ..." progress line, before any ensemble run exists.
    assert deleted.returncode == 2 and "Traceback" not in deleted.stderr, deleted.stderr
    last = deleted.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run {best.run_id}: artifact val_probs.npz cannot be read ("), last
    assert_one_line_error(cli("best", "--study", "bob's", cwd=project), '--study "bob\'s": not a valid study name')
    assert_one_line_error(
        cli("best", "--metric", "val macro", cwd=project), "no finished runs with metric best_val macro in experiment 'tiny'"
    )
    assert_one_line_error(cli("best", "--metric", "f1`) or (`x", cwd=project), "not a metric name; allowed:")
