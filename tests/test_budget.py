"""Wall-clock budgets (``--budget``): parsing, the running trial stopped at an epoch boundary
and kept (its best epoch exported like a finished run's), and the live line of ``--quiet``."""

from __future__ import annotations

import pytest
import yaml

from conftest import assert_one_line_error
from flower_exp.budget import fmt_s, parse_minutes
from flower_exp.errors import FlowerExpError
from flower_exp.progress import QuietProgress, epoch_status
from flower_exp.config import HeartbeatConfig
from flower_exp.study import SweepOptions, open_storage, run_sweep

# Far more epochs than a budget of seconds allows: only the budget can end these runs.
ENDLESS = 5000


@pytest.mark.parametrize(
    "text, minutes",
    [("30m", 30.0), ("90s", 1.5), ("1.5h", 90.0), ("45", 45.0), (" 2M ", 2.0), (".5h", 30.0)],
)
def test_budget_durations_parse_to_minutes(text, minutes):
    assert parse_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "soon", "0", "0m", "-5m", "1d", "inf", "nan", "5 m s", "1e3"])
def test_bad_budgets_are_refused_naming_the_allowed_forms(text):
    with pytest.raises(FlowerExpError, match="--budget"):
        parse_minutes(text)


def test_fmt_s():
    assert [fmt_s(s) for s in (0, 59.6, 95, 3600, 3720)] == ["0s", "1m", "1m35s", "1h", "1h02m"]


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_cli_bad_budget_exits_2_before_writing_anything(cli, tmp_path, command):
    result = cli(command, "--budget", "soon")
    assert_one_line_error(result, "--budget 'soon'", "30m")
    assert not (tmp_path / "mlruns").exists()


@pytest.fixture
def project(tmp_path, demo_root):
    tiny = {
        "data_dir": demo_root,
        "image_size": 32,
        "batch_size_per_replica": 16,
        "shuffle_buffer": 64,
        "cnn_width": 4,
        "cnn_depth": 2,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 1,
        "early_stopping_patience": 0,
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"default": "tiny", "experiments": {"tiny": tiny}}))
    sweep = {
        "trials": 50,
        "sampler": {"name": "random", "seed": 1},
        "pruner": {"name": "none"},
        "params": {"lr_max": {"low": 1.0e-3, "high": 3.0e-3, "log": True}},
        "fixed": {"epochs": ENDLESS},
    }
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "endless.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return tmp_path


def test_budget_stops_the_running_trial_keeps_it_and_best_exports_it(project):
    import optuna

    from flower_exp.best import BestOptions, run_best
    from flower_exp.study.names import ATTR_STOPPED_BY
    from flower_exp.tracking import Tracker, TrackingTarget

    events = []
    result = run_sweep(
        SweepOptions(sweep="endless", config=project / "experiments.yaml", budget_min=0.25, quiet=True),
        log=lambda m: None,
        on_event=events.append,
    )
    assert result.counts["running"] == 0 and result.counts["complete"] == 0
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(result.storage_url, HeartbeatConfig()))
    trials = study.get_trials()
    assert trials and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert all(t.user_attrs[ATTR_STOPPED_BY] == "budget" and 1 <= t.user_attrs["epochs_run"] < ENDLESS for t in trials)
    # The stopped trial counts as the study's best (by its best epoch, not its last report).
    first = trials[0]
    assert result.best[0].value == max(max(t.intermediate_values.values()) for t in trials)
    assert result.best[0].state == "stopped"
    # Epoch events carry what the live line shows.
    epoch = next(e for e in events if e["kind"] == "epoch")
    assert {"trial_best", "budget_used_s", "budget_left_s"} <= set(epoch)

    tracker = Tracker(
        TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny"
    )
    run = tracker.client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["flower_exp.state"] == "stopped" and run.data.tags["flower_exp.stopped_by"] == "budget"
    assert run.data.metrics["stopped_at_epoch"] == first.user_attrs["epochs_run"]
    assert run.info.run_name == f"trial-{first.number} (stopped at {first.user_attrs['epochs_run']})"
    parent = tracker.client.get_run(result.parent_run_id)
    assert parent.data.metrics["sweep_best_val_macro_f1_final"] == result.best[0].value

    best = run_best(
        BestOptions(study=result.study_name, top=1, export=str(project / "export"), config=project / "experiments.yaml"),
        log=lambda m: None,
    )
    # best picks the stopped trial by its best epoch's score; trials tied on that score (short
    # trials on a loaded machine) may come in either order from MLflow.
    (chosen,) = best.candidates
    assert chosen.score == result.best[0].value
    assert chosen.run_id in {t.run_id for t in result.best if t.value == result.best[0].value}
    assert (project / "export" / "ensemble.json").is_file()


def test_train_budget_stops_at_an_epoch_boundary(cli, project):
    result = cli("train", "--budget", "12s", "-q", "--set", f"epochs={ENDLESS}", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "stopped by the budget after epoch" in result.stderr
    assert f"of {ENDLESS}" not in result.stdout


def test_quiet_progress_prints_the_running_trial_at_most_once_a_period():
    lines, now = [], [0.0]
    progress = QuietProgress(lines.append, every_s=60)
    progress._clock = lambda: now[0]
    epoch = {
        "kind": "epoch",
        "number": 3,
        "epoch": 1,
        "epochs": 15,
        "value": 0.5,
        "trial_best": 0.5,
        "budget_used_s": 125.0,
        "budget_left_s": 1675.0,
    }
    progress(epoch)
    now[0] = 30.0
    progress({**epoch, "epoch": 2})
    progress({"kind": "trial_end", "best": 0.8123})
    now[0] = 61.0
    progress({**epoch, "epoch": 3, "value": 0.61, "trial_best": 0.61})
    assert lines == [
        "trial 3 epoch 1/15 (0.500, trial best 0.500)  budget 2m05s used, 27m55s left",
        "trial 3 epoch 3/15 (0.610, trial best 0.610)  study best 0.8123  budget 2m05s used, 27m55s left",
    ]
    assert (
        epoch_status({"kind": "epoch", "number": 0, "epoch": 2, "epochs": 4, "value": 0.25})
        == "trial 0 epoch 2/4 (0.250, trial best 0.250)"
    )
