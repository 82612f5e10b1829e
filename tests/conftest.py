"""Shared fixtures: a CLI runner in a real subprocess and a tiny generated dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(autouse=True)
def _isolated_mlflow_env():
    """``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, which
    flower-exp honours: without this, one test's store would capture every later test's runs."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture
def cli(tmp_path):
    """Run ``flower-exp ARGS`` in a subprocess (cwd: a temp dir unless given)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if k not in ("GCS_DS_PATH", "MLFLOW_TRACKING_URI")}
        full_env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"})
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "flower_exp.cli", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """A user error: exit 2, exactly one line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """A tiny generated dataset (4 classes, 32/64 px) shared by the session; treat as read-only."""
    from flower_exp.data.demo import generate_demo

    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo(str(root), classes=4, per_class=15, sizes=(32, 64), seed=1, shards=2)
    return str(root)


from servers import fresh_postgres_db, mlflow_server, postgres_url  # noqa: E402,F401  (shared fixtures)
