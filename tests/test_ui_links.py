"""`flower-exp ui` lands on the runs in model-training mode and links the latest sweep."""

from __future__ import annotations

import json
import os
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from flower_exp import cli as cli_mod
from flower_exp.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TAG_KIND, TAG_STUDY, Tracker, default_target
from flower_exp.ui_links import MAX_COMPARED, base_url, compare_page


@pytest.fixture
def ui(monkeypatch, tmp_path):
    """Run `flower-exp ui` in-process in ``tmp_path`` with ``os.execve`` captured."""
    monkeypatch.setattr(os, "execve", lambda *_a: (_ for _ in ()).throw(SystemExit(0)))
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(cli_mod.app, ["ui", "--port", "5123", *args])
        assert result.exit_code == 0, result.output
        return result.stderr

    return invoke


def _sweep(tracker: Tracker, study: str, scores: list[float | None]) -> tuple[str, list[str]]:
    parent = tracker.start(study, {TAG_KIND: "sweep", TAG_STUDY: study})
    trials = []
    for i, score in enumerate(scores):
        run_id = tracker.start(f"trial-{i}", {TAG_KIND: "trial"}, parent)
        if score is not None:  # None: a trial that failed before its first epoch
            tracker.log_metrics(run_id, {"best_val_macro_f1": score})
        trials.append(run_id)
    return parent, trials


def test_ui_prints_runs_table_latest_sweep_and_compare_links(ui, tmp_path):
    tracker = Tracker(default_target(tmp_path), "flowers")
    _old_parent, _ = _sweep(tracker, "old", [0.9, 0.8])
    parent, (t0, t1, t2, _failed) = _sweep(tracker, "new", [0.5, 0.7, 0.6, None])
    Tracker(default_target(tmp_path), "empty")  # an experiment without runs gets no links

    lines = ui().splitlines()
    eid = tracker.experiment_id
    assert f"  flowers: runs: http://127.0.0.1:5123/#/experiments/{eid}/runs?workflowType=machine_learning" in lines
    assert f"  flowers: sweep new: http://127.0.0.1:5123/#/experiments/{eid}/runs/{parent}" in lines
    (compare,) = [line for line in lines if "compare" in line]
    assert compare.startswith("  flowers: compare its 3 trials: http://127.0.0.1:5123/#/compare-runs?runs=")
    query = dict(part.split("=", 1) for part in compare.split("?", 1)[1].split("&"))
    assert json.loads(unquote(query["runs"])) == [t1, t2, t0]  # best first, the failed trial left out
    assert json.loads(unquote(query["experiments"])) == [eid]
    assert not any("empty" in line for line in lines)
    assert ui("-e", "other").count("no runs yet in experiment other") == 1


def test_experiments_are_marked_model_training(tmp_path):
    from mlflow.tracking import MlflowClient

    target = default_target(tmp_path)
    tracker = Tracker(target, "flowers")
    client = MlflowClient(target.uri)
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # An experiment made without the tag (an older flower-exp, or by hand) gets it on next use.
    bare = client.create_experiment("bare")
    Tracker(target, "bare")
    assert client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_new_project_has_no_runs_yet(ui):
    assert "no runs yet: start with flower-exp sweep" in ui()


def test_links_address_the_loopback_for_a_wildcard_bind_and_cap_the_comparison():
    assert base_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert base_url("::1", 5000) == "http://[::1]:5000"
    many = [f"r{i}" for i in range(MAX_COMPARED + 5)]
    from flower_exp.tracking import SweepOverview
    from flower_exp.ui_links import links

    (_, _, compare) = links([SweepOverview("e", "1", "s", "p", many)], "http://h")
    assert compare.label == f"e: compare its {MAX_COMPARED} best trials"
    assert compare.url == compare_page("http://h", "1", many[:MAX_COMPARED])
