"""MLflow conventions: store location, overrides, credential redaction, run states."""

from __future__ import annotations

import pytest

from flower_exp.errors import FlowerExpError
from flower_exp.tracking import TAG_ERROR, TAG_STATE, Tracker, TrackingTarget, default_target, redact


def test_default_store_is_under_project_mlruns(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = default_target(tmp_path)
    assert target.uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert target.artifact_root == str(tmp_path / "mlruns" / "artifacts")


def test_env_and_flag_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_target(tmp_path).uri == "http://127.0.0.1:5999"
    assert default_target(tmp_path).artifact_root is None  # the server decides
    assert default_target(tmp_path, "sqlite:////x/y.db").uri == "sqlite:////x/y.db"


def test_redact_hides_passwords():
    assert redact("postgresql://bob:s3cret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"


def test_params_are_redacted_and_failed_runs_tagged(tmp_path):
    tracker = Tracker(TrackingTarget(f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "a")), "exp")
    with pytest.raises(RuntimeError):
        with tracker.run("r") as run_id:
            tracker.log_params(run_id, {"storage": "postgresql://bob:s3cret@db/optuna", "lr": 1e-4})
            raise RuntimeError("boom")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.params["storage"] == "postgresql://bob:***@db/optuna"
    assert run.data.params["lr"] == "0.0001"
    assert run.data.tags[TAG_STATE] == "failed" and "RuntimeError: boom" in run.data.tags[TAG_ERROR]
    # Reopening the same store finds the experiment instead of creating another.
    assert Tracker(tracker.target, "exp").experiment_id == tracker.experiment_id


def test_runs_are_searched_read_and_reopened_through_the_tracker(tmp_path):
    target = TrackingTarget(f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "a"))
    tracker, other = Tracker(target, "exp"), Tracker(target, "other")
    ids = {}
    for name, score in (("low", 0.2), ("high", 0.9), ("mid", 0.5)):
        with tracker.run(name, {"flower_exp.kind": "train"}) as ids[name]:
            tracker.log_metrics(ids[name], {"best_val_macro_f1": score})
    with other.run("elsewhere", {"flower_exp.kind": "train"}):
        pass
    found = tracker.search_runs("tags.`flower_exp.kind` = 'train'", order_by=["metrics.best_val_macro_f1 DESC"])
    assert [r.info.run_name for r in found] == ["high", "mid", "low"]  # this experiment's runs only
    assert [r.info.run_id for r in tracker.search_runs("", order_by=["metrics.best_val_macro_f1 ASC"], max_results=1)] == [
        ids["low"]
    ]
    assert tracker.search_runs("tags.`flower_exp.kind` = 'sweep'") == []
    assert tracker.get_run(ids["mid"]).info.status == "FINISHED"
    tracker.set_status(ids["mid"], "RUNNING")
    run = tracker.get_run(ids["mid"])
    assert run.info.status == "RUNNING" and run.data.tags[TAG_STATE] == "finished"  # tags untouched


def test_unreachable_store_is_a_user_error(tmp_path):
    (tmp_path / "a-directory.db").mkdir()
    target = TrackingTarget(f"sqlite:///{tmp_path / 'a-directory.db'}", None)
    with pytest.raises(FlowerExpError, match="MLflow tracking store .* is a directory"):
        Tracker(target, "exp")


OPEN_AT_ONCE = """
import sys, time
from flower_exp.tracking import Tracker, default_target
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(Tracker(default_target(sys.argv[1]), "race").experiment_id)
"""


def test_processes_opening_a_new_project_store_at_once_all_succeed(tmp_path):
    """MLflow migrates a fresh sqlite store without a lock; unguarded, 3 processes opening a new
    project at the same moment failed in 3 of 3 tries and left a database nothing could open."""
    import subprocess
    import sys
    import time

    script = tmp_path / "open.py"
    script.write_text(OPEN_AT_ONCE)
    project = tmp_path / "project"
    start = time.time() + 8  # every process has imported MLflow by then, so they meet at the store
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(project), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, found by all
    assert Tracker(default_target(project), "race").experiment_id == results[0][0].strip()
