"""The sweep in one process: MLflow parent/child runs, resume, --new, sweep-file errors."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, assert_one_line_error
from flower_exp.config import load_experiment, load_sweep
from flower_exp.errors import FlowerExpError
from flower_exp.runs import FIXED_COLUMNS, list_runs
from flower_exp.study import SweepOptions, run_sweep, study_status
from flower_exp.study.sampling import suggest
from flower_exp.tracking import Tracker, TrackingTarget

SWEEP = {
    "trials": 3,
    "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
    "heartbeat": {"interval_s": 5, "grace_s": 30},
    "params": {
        "architecture": {"choices": ["cnn"]},
        "cnn_width": {"choices": [4, 8], "when": {"architecture": ["cnn"]}},
        "lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True},
        "lr_rampup_epochs": {"low": 0, "high": 1},
    },
    "fixed": {"epochs": 2, "cnn_depth": 2},
}


@pytest.fixture
def project(tmp_path, demo_root):
    tiny = {"data_dir": demo_root, "image_size": 32, "batch_size_per_replica": 16, "shuffle_buffer": 64, "lr_sustain_epochs": 1}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"default": "tiny", "experiments": {"tiny": tiny}}))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return tmp_path


def sweep(project, **kwargs):
    return run_sweep(SweepOptions(sweep="tiny", config=project / "experiments.yaml", quiet=True, **kwargs), log=lambda m: None)


def tracker_for(project) -> Tracker:
    return Tracker(TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny")


def children(tracker, parent):
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_sweep_logs_parent_and_children_and_resumes(project):
    import optuna

    result = sweep(project, trials=2)
    assert result.counts["finished"] == 2
    tracker = tracker_for(project)
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["flower_exp.kind"] == "sweep" and parent.data.tags["flower_exp.study"] == "tiny-tiny"
    assert json.loads(parent.data.params["search_space"])["lr_max"]["log"] is True
    # The parent's metrics never rank among its trials' (issue 15).
    assert "best_val_macro_f1" not in parent.data.metrics and "sweep_best_val_macro_f1_final" in parent.data.metrics
    runs = children(tracker, result.parent_run_id)
    assert len(runs) == 2
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "mlruns" / "optuna" / "journal.log"))
    )
    study = optuna.load_study(study_name="tiny-tiny", storage=storage)
    by_number = {t.number: t for t in study.trials}
    for run in runs:
        trial = by_number[int(run.data.tags["flower_exp.trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["lr_max"]) == pytest.approx(trial.params["lr_max"])
        assert run.data.params["cnn_width"] == str(trial.params["cnn_width"])
        assert run.data.params["epochs"] == "2" and run.data.params["cnn_depth"] == "2"  # fixed
        assert run.data.tags["flower_exp.state"] in ("finished", "pruned")
        assert run.data.tags["flower_exp.optuna_state"] == trial.state.name
        # The searched values again, under one prefix; fixed settings are not searched.
        assert {k: v for k, v in run.data.params.items() if k.startswith("search.")} == {
            f"search.{k}": run.data.params[k] for k in trial.params
        }
        ended = f" (pruned at {trial.user_attrs['epochs_run']})" if trial.state.name == "PRUNED" else ""
        assert run.info.run_name == f"trial-{trial.number}{ended}"
    best_curve = tracker.client.get_metric_history(result.parent_run_id, "sweep_best_val_macro_f1")
    assert [m.step for m in best_curve] == sorted(m.step for m in best_curve) and best_curve
    assert best_curve[-1].value == pytest.approx(study.best_value)
    artifacts = {a.path for a in tracker.client.list_artifacts(result.parent_run_id, "optuna")}
    assert "optuna/trials.csv" in artifacts and "optuna/optimization_history.png" in artifacts

    # Resume: --trials counts the total, the parent is reused, done trials are not redone.
    again = sweep(project, trials=3)
    assert again.parent_run_id == result.parent_run_id
    assert again.counts["finished"] == 3
    assert len(children(tracker, result.parent_run_id)) == 3
    assert len(tracker.client.search_runs([tracker.experiment_id], "tags.`flower_exp.kind` = 'sweep'")) == 1

    status = study_status(sweep="tiny", config=project / "experiments.yaml", top=2)
    assert status.counts["complete"] + status.counts["pruned"] == 3
    assert status.parent_run_id == result.parent_run_id
    assert 1 <= len(status.top) <= 2 and status.top[0] == status.best
    assert all(row.state == "complete" for row in status.top)

    # flower-exp runs --study: the study's trials only, its search space as columns, rounded.
    table = list_runs(tracker.target, "tiny", study="tiny-tiny")
    assert table.columns == [*FIXED_COLUMNS, "architecture", "cnn_width", "lr_max", "lr_rampup_epochs"]
    assert table.parent_run_id == result.parent_run_id
    by_run = {run.info.run_id[:8]: run for run in children(tracker, result.parent_run_id)}
    assert sorted(row[0] for row in table.rows) == sorted(by_run)
    for row in table.rows:
        assert row[1] == by_run[row[0]].info.run_name
        assert row[7] == f"{float(by_run[row[0]].data.params['lr_max']):.3g}"

    with pytest.raises(FlowerExpError, match="already exists .* rerun without --new"):
        sweep(project, trials=1, new=True)
    fresh = sweep(project, trials=1, new=True, force=True)
    assert fresh.counts["finished"] == 1 and fresh.parent_run_id != result.parent_run_id


def test_enqueued_configuration_runs_first_and_conditionals(project):
    spec = dict(SWEEP, enqueue=[{"architecture": "cnn", "cnn_width": 8, "lr_max": 2.0e-3, "lr_rampup_epochs": 0}])
    (project / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = sweep(project, trials=1)
    tracker = tracker_for(project)
    (run,) = children(tracker, result.parent_run_id)
    assert run.data.params["lr_max"] == "0.002" and run.data.params["cnn_width"] == "8"

    class FakeTrial:
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_float(self, name, low, high, step=None, log=False):
            return low

        def suggest_int(self, name, low, high, step=1, log=False):
            return high

    cfg = load_sweep(project / "sweeps" / "tiny.yaml")
    cfg.params["architecture"].choices = ["densenet121"]
    values = suggest(FakeTrial(), cfg.params, cfg.fixed)
    assert "cnn_width" not in values  # only sampled when architecture is cnn
    assert values == {"architecture": "densenet121", "lr_max": 1e-3, "lr_rampup_epochs": 1}


def test_shipped_sweeps_validate_and_are_packaged():
    exp = load_experiment("demo", REPO / "experiments.yaml").config
    petals = load_experiment("petals", REPO / "experiments.yaml", env={"GCS_DS_PATH": "gs://b/x"}).config
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        cfg = load_sweep(path, petals if path.stem.startswith("petals") else exp)
        assert cfg.params
        packaged = REPO / "flower_exp" / "resources" / "sweeps" / path.name
        assert packaged.read_text() == path.read_text(), f"{packaged} must equal {path}"
    seed = load_sweep(REPO / "sweeps" / "petals-seed.yaml", petals)
    assert seed.enqueue[0]["architecture"] == "efficientnet_ns_b7" and seed.enqueue[0]["lr_max"] == 8e-4


BAD_SWEEPS = {
    "low_above_high": ("params: {lr_max: {low: 1.0, high: 0.1}}\n", "params.lr_max: low > high"),
    "unknown_setting": ("params: {lr_maxx: {low: 0.1, high: 1.0}}\n", "params.lr_maxx: 'lr_maxx' is not an experiment setting"),
    "bad_choice": ("params: {architecture: {choices: [resnet]}}\n", "params.architecture: value 'resnet' is invalid"),
    "empty_space": ("params: {}\n", "params:"),
    "unknown_sampler": (
        "sampler: {name: cmaes}\nparams: {epochs: {low: 1, high: 2}}\n",
        "sampler.name: unknown sampler 'cmaes'; allowed: tpe, random, grid",
    ),
    "unknown_pruner": ("pruner: {name: asha}\nparams: {epochs: {low: 1, high: 2}}\n", "pruner.name: unknown pruner 'asha'"),
    "malformed": ("params: {epochs: [\n", "malformed YAML"),
    "zero_epochs": ("params: {epochs: {low: 0, high: 2}}\n", "params.epochs: value 0 is invalid"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_files_exit_2_with_one_line(cli, project, case):
    text, fragment = BAD_SWEEPS[case]
    (project / "sweeps" / "bad.yaml").write_text(text)
    result = cli("sweep", "-s", "bad", cwd=project)
    assert_one_line_error(result, "bad.yaml", fragment)
    assert not (project / "mlruns" / "optuna").exists()  # nothing written before validation


def test_storage_and_worker_errors_exit_2(cli, project):
    assert_one_line_error(cli("sweep", "-s", "tiny", "--storage", "redis://127.0.0.1/0", cwd=project), "unknown scheme 'redis'")
    assert_one_line_error(
        cli("sweep", "-s", "tiny", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/optuna", cwd=project),
        "Optuna storage postgresql://bob:***@127.0.0.1:1/optuna: unavailable",
    )
    assert_one_line_error(cli("sweep", "-s", "nope", cwd=project), "sweep 'nope'")
    assert_one_line_error(cli("sweep", "-s", "tiny", "--workers", "0", cwd=project), "--workers 0")
    assert_one_line_error(cli("status", "-s", "tiny", cwd=project), "no sweeps yet")


def test_trial_line_says_where_a_pruned_trial_stopped():
    import optuna

    from flower_exp.study.scoring import trial_line

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5487, state=optuna.trial.TrialState.COMPLETE))
    study.add_trial(
        optuna.trial.create_trial(
            value=0.3695,
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1: 0.3781, 2: 0.3695},
            user_attrs={"epochs_run": 4},
        )
    )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    complete, pruned, failed = study.trials
    assert trial_line(complete, 0.5487) == "trial 0 complete 0.5487; best so far 0.5487"
    # Optuna's value of a pruned trial is its last report; the line must not pass it off as its score.
    assert trial_line(pruned, 0.5487) == "trial 1 pruned at epoch 4, last val_macro_f1 0.3695; best so far 0.5487"
    assert trial_line(failed, None) == "trial 2 fail; best so far -"

    # The run of a pruned or stopped trial is renamed so the MLflow runs table shows it.
    from flower_exp.study.scoring import ended_run_name

    study.add_trial(
        optuna.trial.create_trial(
            value=0.4,
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1: 0.4},
            user_attrs={"epochs_run": 3, "stopped_by": "budget"},
        )
    )
    assert [ended_run_name(t) for t in study.trials] == [None, "trial-1 (pruned at 4)", None, "trial-3 (stopped at 3)"]


def test_running_sweep_refreshes_the_parents_optuna_report(project, monkeypatch):
    """The parent run's ``optuna/`` report follows a running sweep (here after every trial),
    not only its end."""
    from flower_exp.study import objective

    seen = []
    refresh = objective.log_report

    def recording(study, tracker, parent, log):
        if seen:  # the previous refresh is already in MLflow while the sweep runs
            local = tracker.download(parent, "optuna/trials.csv", str(project / f"dl{len(seen)}"))
            seen.append(len(open(local).read().splitlines()) - 1)
        else:
            seen.append(None)
        refresh(study, tracker, parent, log)

    monkeypatch.setattr(objective, "REPORT_REFRESH_S", 0.0)
    monkeypatch.setattr(objective, "log_report", recording)
    sweep(project, trials=2)
    assert seen == [None, 1]  # refreshed after trial 0 (one row) and again after trial 1
