"""CLI start-up and plumbing that does not need data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error

HEAVY = ("tensorflow", "keras", "mlflow", "optuna")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["data", "--help"], ["config", "--help"], ["data", "inspect", "--help"], ["data", "demo", "--help"],
     ["data", "import-folder", "--help"], ["data", "check-leakage", "--help"], ["config", "show", "--help"], ["--version"],
     ["train", "--help"], ["sweep", "--help"], ["status", "--help"], ["runs", "--help"], ["ui", "--help"]],
)
def test_help_does_not_import_heavy_libraries(argv):
    code = (
        "import sys\n"
        f"sys.argv = ['flower-exp', *{argv!r}]\n"
        "from flower_exp.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-300:]


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("flower-exp")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("flower-exp "), proc.stderr


def test_bad_int_list_is_a_user_error(cli, tmp_path):
    assert_one_line_error(cli("data", "demo", "--out", str(tmp_path / "d"), "--sizes", "32,x"), "--sizes '32,x'")
    assert not (tmp_path / "d").exists()


def test_status_reads_a_study_without_tensorflow(tmp_path):
    import optuna

    journal = tmp_path / "mlruns" / "optuna" / "journal.log"
    journal.parent.mkdir(parents=True)
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="demo-demo", storage=storage, direction="maximize")
    study.set_user_attr("mlflow_parent_run_id", "parent123")
    study.optimize(lambda t: t.suggest_float("lr_max", 1e-4, 1e-2, log=True), n_trials=3)
    # Stopped by the budget: PRUNED, ranked by its best epoch (0.99), not its last report.
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, value=0.5, intermediate_values={1: 0.99, 2: 0.5},
        params={"lr_max": 0.0012345}, distributions={"lr_max": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
        user_attrs={"stopped_by": "budget", "mlflow_run_id": "stoppedrun", "best_epoch": 1}))
    code = (
        "import sys\n"
        "sys.argv = ['flower-exp', 'status', '--top', '2']\n"
        "from flower_exp.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('TF=' + str('tensorflow' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 complete, 1 pruned" in proc.stdout and "parent123" in proc.stdout
    assert "best: trial 3 val_macro_f1 0.9900 (lr_max=0.00123); MLflow run stoppedrun" in proc.stdout
    # The top trials as a table: the stopped one first, then the best complete one.
    assert "top 2 trials (val_macro_f1)" in proc.stdout
    cells = [[c.strip() for c in re.split(r"[│|]", line)[1:-1]] for line in proc.stdout.splitlines()]
    rows = [row[:5] + row[-1:] for row in cells if row and row[0].isdigit()]
    best = study.best_trial
    assert rows == [["3", "stopped", "0.9900", "1", "0.00123", "stoppedrun"],
                    [str(best.number), "complete", f"{best.value:.4f}", "", f"{best.params['lr_max']:.3g}", ""]]
    assert "TF=False" in proc.stdout


# --------------------------------------------------------------------------- rendering


WIDE = {"COLUMNS": "400"}  # no wrapping, so whole descriptions can be matched


def test_config_keys_prints_bracketed_descriptions_verbatim():
    from typer.testing import CliRunner

    from flower_exp.cli import app
    from flower_exp.config import describe_fields

    bracketed = [description for _key, _default, description in describe_fields() if "[" in description]
    assert bracketed, "no description with brackets left to check"
    result = CliRunner().invoke(app, ["config", "keys"], env=WIDE)
    assert result.exit_code == 0, result.output
    for description in bracketed:
        assert description in result.stdout


def test_logged_messages_print_markup_literally(capsys):
    from flower_exp.cli import _log

    _log("layer [bold]conv[/bold] in [red]")
    assert "layer [bold]conv[/bold] in [red]" in capsys.readouterr().err


def test_help_shows_flags_without_a_value_type():
    from typer.testing import CliRunner

    from flower_exp.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "--allow-leakage" in result.stdout and "--quiet" in result.stdout
    assert "<bool>" not in result.stdout
    assert "<int>" in result.stdout  # options that take a value still show its type
