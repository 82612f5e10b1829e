"""Security defaults: servers bind loopback unless told otherwise (with a warning), and a
password in a storage URL never reaches MLflow params/tags or printed messages."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error
from flower_exp import cli as cli_mod
from flower_exp.cli import servers
from flower_exp.tracking import TrackingTarget

PASSWORD = "s3cr3t-Pa55"


# --------------------------------------------------------------------------- ui binds loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_warning(host):
    assert servers.bind_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "myhost.example.com"])
def test_other_hosts_are_warned_about(host):
    warning = servers.bind_warning(host)
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"warning: binding to {host}: ")


def test_ui_argv_always_names_the_host_and_keeps_the_store_uri_off_the_command_line():
    target = TrackingTarget(f"postgresql://bob:{PASSWORD}@127.0.0.1/mlflow", "/p/mlruns/artifacts")
    argv, env = servers.ui_argv("/bin/mlflow", target)
    assert argv[:2] == ["/bin/mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert PASSWORD not in " ".join(argv)  # `ps` shows every user the command line
    assert env["MLFLOW_BACKEND_STORE_URI"] == target.uri
    assert argv[argv.index("--default-artifact-root") + 1] == "file:///p/mlruns/artifacts"
    assert servers.ui_argv("/bin/mlflow", target, "0.0.0.0", 8080)[0][2:6] == ["--host", "0.0.0.0", "--port", "8080"]


@pytest.fixture
def exec_calls(monkeypatch, tmp_path):
    """Run `flower-exp ui` in-process with ``os.execve`` captured instead of becoming the server."""
    calls = []

    def fake_execve(path, argv, env):
        calls.append((path, argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.chdir(tmp_path)
    return calls


def test_ui_command_binds_loopback_by_default(exec_calls):
    result = CliRunner().invoke(cli_mod.app, ["ui", "--port", "5123"])
    assert result.exit_code == 0, result.output
    ((_path, argv, env),) = exec_calls
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5123"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "warning" not in result.stderr
    # The new project's store was created under flower-exp's lock before the server started.
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"
    assert (Path.cwd() / "mlruns" / "mlflow.db").stat().st_size > 0


def test_ui_command_warns_once_when_binding_elsewhere(exec_calls):
    result = CliRunner().invoke(cli_mod.app, ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    ((_path, argv, _env),) = exec_calls
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["warning: binding to 0.0.0.0: anyone who can reach this machine can read and change your runs"]


def test_ui_redacts_a_tracking_password(exec_calls):
    uri = f"postgresql://bob:{PASSWORD}@127.0.0.1:5432/mlflow"
    result = CliRunner().invoke(cli_mod.app, ["ui", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output + result.stderr
    assert "postgresql://bob:***@127.0.0.1:5432/mlflow" in result.stderr
    ((_path, argv, env),) = exec_calls
    assert PASSWORD not in " ".join(argv) and env["MLFLOW_BACKEND_STORE_URI"] == uri


# --------------------------------------------------------------------------- redaction


def test_unreachable_storage_errors_are_redacted(cli, tmp_path):
    url = f"postgresql://bob:{PASSWORD}@127.0.0.1:1/optuna"
    for argv in (["sweep", "--storage", url], ["status", "--storage", url, "--study", "x"]):
        result = cli(*argv, cwd=tmp_path, timeout=120)
        assert_one_line_error(result, "postgresql://bob:***@127.0.0.1:1/optuna: unavailable")
        assert PASSWORD not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_sweep_on_postgres_with_password_never_records_it(cli, tmp_path, demo_root, fresh_postgres_db):
    from mlflow.tracking import MlflowClient

    # The test cluster trusts loopback, so any password connects: it only has to be carried.
    parts = urllib.parse.urlsplit(fresh_postgres_db)
    url = urllib.parse.urlunsplit(
        parts._replace(scheme="postgresql", netloc=f"postgres:{PASSWORD}@{parts.hostname}:{parts.port}")
    )
    tiny = {
        "data_dir": demo_root,
        "image_size": 32,
        "batch_size_per_replica": 16,
        "shuffle_buffer": 32,
        "architecture": "cnn",
        "cnn_width": 4,
        "cnn_depth": 1,
        "epochs": 1,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 0,
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"default": "tiny", "experiments": {"tiny": tiny}}))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(
        yaml.safe_dump(
            {
                "trials": 1,
                "sampler": {"name": "random", "seed": 1},
                "pruner": {"name": "none"},
                "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}},
                "fixed": {"epochs": 1},
            }
        )
    )

    sweep = cli("sweep", "-s", "tiny", "--storage", url, cwd=tmp_path, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    status = cli("status", "-s", "tiny", "--storage", url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    printed = sweep.stdout + sweep.stderr + status.stdout + status.stderr
    assert PASSWORD not in printed
    assert "postgres:***@" in printed  # the storage is named, redacted

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2  # the parent and the one trial
    for run in runs:
        recorded = {**run.data.params, **run.data.tags}
        leaks = {k: v for k, v in recorded.items() if PASSWORD in str(v)}
        assert not leaks, leaks
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.params["storage"] == url.replace(PASSWORD, "***")
