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
    [
        ["--help"],
        ["data", "--help"],
        ["config", "--help"],
        ["data", "inspect", "--help"],
        ["data", "demo", "--help"],
        ["data", "import-folder", "--help"],
        ["data", "check-leakage", "--help"],
        ["config", "show", "--help"],
        ["--version"],
        ["train", "--help"],
        ["sweep", "--help"],
        ["status", "--help"],
        ["runs", "--help"],
        ["ui", "--help"],
        ["models", "--help"],
        ["models"],
        ["weights", "--help"],
        ["weights"],
    ],
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
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            value=0.5,
            intermediate_values={1: 0.99, 2: 0.5},
            params={"lr_max": 0.0012345},
            distributions={"lr_max": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            user_attrs={"stopped_by": "budget", "mlflow_run_id": "stoppedrun", "best_epoch": 1},
        )
    )
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
    assert rows == [
        ["3", "stopped", "0.9900", "1", "0.00123", "stoppedrun"],
        [str(best.number), "complete", f"{best.value:.4f}", "", f"{best.params['lr_max']:.3g}", ""],
    ]
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
    from flower_exp.cli.core import _log

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


# --------------------------------------------------------------------------- models


def test_models_lists_the_registry_and_counts_parameters_on_request(cli):
    from flower_exp.models import list_models

    listed = cli("models")
    assert listed.returncode == 0, listed.stderr
    for name in list_models():
        assert f" {name} " in listed.stdout
    assert "params (" not in listed.stdout and "noisy-student" in listed.stdout
    counted = cli("models", "cnn", "efficientnet_ns_b0", "--image-size", "64", "--classes", "5")
    assert counted.returncode == 0, counted.stderr
    rows = {line.split()[1]: line for line in counted.stdout.splitlines() if line.startswith("│ ")}
    assert sorted(rows) == ["cnn", "efficientnet_ns_b0"]
    cnn = re.search(r"([\d,]+) │$", rows["cnn"])
    # Four blocks of two 3x3 convolutions (no bias) with batch norm, widening 32 -> 256, a 5-class head.
    assert cnn and int(cnn[1].replace(",", "")) == _cnn_params(32, 4, classes=5)


def _cnn_params(width: int, depth: int, classes: int) -> int:
    total, channels = 0, 3
    for block in range(depth):
        filters = width * 2 ** min(block, 4)
        total += 9 * channels * filters + 4 * filters + 9 * filters * filters + 4 * filters
        channels = filters
    return total + channels * classes + classes


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["resnet*"], "architecture 'resnet*': matches no registered one; allowed: cnn, densenet121"),
        (["cnn", "--image-size", "16"], "--image-size 16: must be at least 32"),
        (["cnn", "--params", "--classes", "1"], "--classes 1: must be at least 2"),
    ],
)
def test_models_errors(cli, args, fragment):
    assert_one_line_error(cli("models", *args), fragment)


def test_weights_lists_each_file_where_it_is_looked_for_and_whether_it_is_there(cli, tmp_path):
    project, env_dir, keras_home = tmp_path / "project", tmp_path / "env", tmp_path / "keras"
    (project / "weights").mkdir(parents=True)
    (project / "experiments.yaml").write_text("experiments:\n  mine: {data_dir: data, weights_dir: weights}\n")
    (project / "weights" / "efficientnetb0_notop.h5").write_bytes(b"")
    env_dir.mkdir()
    (env_dir / "efficientnetb0_notop.h5").write_bytes(b"")  # weights_dir comes first
    (env_dir / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"")
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / "efficientnet-b0_noisy-student_notop.h5").write_bytes(b"")
    env = {"FLOWER_EXP_WEIGHTS": str(env_dir), "KERAS_HOME": str(keras_home)}

    listed = cli("weights", "efficientnet*b0", "densenet121", "cnn", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")] for line in listed.stdout.splitlines() if line.startswith("│ ")
    ]
    assert rows == [
        ["densenet121", "imagenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "yes ($FLOWER_EXP_WEIGHTS)"],
        ["efficientnet_b0", "imagenet", "efficientnetb0_notop.h5", "yes (weights_dir)"],
        ["efficientnet_ns_b0", "imagenet", "efficientnet-b0_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5", "no"],
        ["efficientnet_ns_b0", "noisy-student", "efficientnet-b0_noisy-student_notop.h5", "yes (Keras cache)"],
    ]
    assert f"  1. weights_dir of experiment 'mine': {project / 'weights'}" in listed.stdout
    assert f"  2. $FLOWER_EXP_WEIGHTS: {env_dir}" in listed.stdout
    assert f"  3. Keras cache: {keras_home / 'models'}" in listed.stdout
    assert "cnn: no pretrained weights" in listed.stdout
    with_urls = cli("weights", "densenet121", "--urls", cwd=project, env=env)
    assert with_urls.returncode == 0, with_urls.stderr
    assert (
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/densenet121_weights_tf_dim_ordering_tf_"
        "kernels_notop.h5"
    ) in with_urls.stdout.splitlines()  # a whole line, unwrapped


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["resnet*"], "architecture 'resnet*': matches no registered one; allowed: cnn, densenet121"),
        (["-e", "nope"], "experiments.nope: unknown experiment; allowed: demo"),
    ],
)
def test_weights_errors(cli, args, fragment):
    assert_one_line_error(cli("weights", *args), fragment)


# --------------------------------------------------------------------------- sweep --set


@pytest.mark.parametrize("item", ["image_size=big", "nokey=1", "novalue", "augment.flipp=true", "epochs=0"])
def test_sweep_set_is_validated_exactly_like_train_set(cli, tmp_path, item):
    trained = cli("train", "--set", item)
    swept = cli("sweep", "--set", item)
    assert_one_line_error(trained, "--set")
    assert_one_line_error(swept, "--set")
    assert swept.stderr == trained.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data, no mlruns


def test_sweep_set_refuses_a_searched_key_before_anything_is_written(cli, tmp_path):
    result = cli("sweep", "-s", "cpu", "--set", "epochs=2", "--set", "image_size=64")
    assert_one_line_error(result, "--set image_size: ", "cpu.yaml: params.image_size searches it")
    assert list(tmp_path.iterdir()) == []
