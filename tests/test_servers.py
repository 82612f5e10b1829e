"""The test servers are real: PostgreSQL for Optuna from two processes, MLflow over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

# Registered here until conftest.py re-exports them for the whole suite (harmless duplicate
# afterwards: both registrations share one refcounted cluster).
from servers import (  # noqa: F401
    LOOPBACK,
    find_pg_bin,
    fresh_postgres_db,
    listening_addresses,
    mlflow_server,
    postgres_url,
)

pytestmark = pytest.mark.slow


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


def _python(snippet: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(snippet), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 90) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"subprocess timed out\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out


def test_find_pg_bin_has_server_binaries():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (apt-get install postgresql)")
    assert (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file()


def test_postgres_answers_on_loopback_only(postgres_url):
    import sqlalchemy as sa

    assert postgres_url.startswith(f"postgresql+psycopg2://postgres@{LOOPBACK}:")
    assert postgres_url.endswith("/flower_exp_test")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
            assert conn.execute(sa.text("select current_database()")).scalar() == "flower_exp_test"
            assert conn.execute(sa.text("show listen_addresses")).scalar() == LOOPBACK
    finally:
        engine.dispose()
    assert listening_addresses(_port(postgres_url)) == {LOOPBACK}


OPTUNA_WORKER = """
    import sys
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name = sys.argv[1:3]
    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))
    study.optimize(lambda t: (t.suggest_float("x", -1.0, 1.0) - 0.3) ** 2, n_trials=2)
"""


def test_optuna_rdb_storage_from_two_processes(fresh_postgres_db, tmp_path):
    import optuna

    assert urllib.parse.urlsplit(fresh_postgres_db).path.startswith("/t_")  # a database of its own
    storage = optuna.storages.RDBStorage(fresh_postgres_db)  # creates the tables once, here
    study = optuna.create_study(study_name="servers-smoke", storage=storage, direction="minimize")

    workers = [_python(OPTUNA_WORKER, fresh_postgres_db, "servers-smoke", cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        _finish(worker)

    trials = optuna.load_study(study_name="servers-smoke", storage=storage).get_trials(deepcopy=False)
    assert len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert study.best_value == min(t.value for t in trials)
    storage.remove_session()
    storage.engine.dispose()


MLFLOW_CLIENT = """
    import json
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    url, workdir = sys.argv[1:3]
    client = MlflowClient(tracking_uri=url)
    exp_id = client.create_experiment("servers-smoke")
    parent = client.create_run(exp_id, run_name="sweep")
    child = client.create_run(
        exp_id, run_name="trial-0", tags={"mlflow.parentRunId": parent.info.run_id}
    )
    client.log_metric(child.info.run_id, "val_accuracy", 0.75, step=1)
    note = Path(workdir) / "note.txt"
    note.write_text("hello from another process")
    client.log_artifact(child.info.run_id, str(note), artifact_path="notes")
    client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    print(json.dumps({"exp": exp_id, "parent": parent.info.run_id, "child": child.info.run_id}))
"""


def test_mlflow_server_on_postgres_logs_and_serves_artifacts(mlflow_server, fresh_postgres_db, tmp_path):
    from mlflow.tracking import MlflowClient

    artifacts = tmp_path / "served-artifacts"
    url = mlflow_server(fresh_postgres_db, artifacts)
    assert url.startswith(f"http://{LOOPBACK}:")
    assert listening_addresses(_port(url)) == {LOOPBACK}

    out = _finish(_python(MLFLOW_CLIENT, url, str(tmp_path), cwd=tmp_path))
    ids = json.loads(out.strip().splitlines()[-1])

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment(ids["exp"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    children = client.search_runs([ids["exp"]], filter_string=f"tags.mlflow.parentRunId = '{ids['parent']}'")
    assert [run.info.run_id for run in children] == [ids["child"]]
    assert children[0].data.metrics == {"val_accuracy": 0.75}

    listed = [entry.path for entry in client.list_artifacts(ids["child"], "notes")]
    assert listed == ["notes/note.txt"]
    local = client.download_artifacts(ids["child"], "notes/note.txt", str(tmp_path / "download"))
    assert Path(local).read_text() == "hello from another process"
    # ...and it really went through the server into --artifacts-destination.
    assert [p.read_text() for p in artifacts.rglob("note.txt")] == ["hello from another process"]
