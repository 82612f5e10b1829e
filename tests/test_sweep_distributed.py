"""Sweeps shared by several processes: local workers on the journal file, a worker killed
mid-trial and retried, and two "machines" on PostgreSQL + an MLflow tracking server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from flower_exp.study.names import ATTR_PARENT, ATTR_RETRY_OF, ATTR_RUN
from flower_exp.study.storage import HEARTBEAT_ATTR
from flower_exp.tracking import TAG_KIND, TAG_STATE
from projects import write_project

GRACE_S = 4
SWEEP = {
    "trials": 4,
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "none"},
    "heartbeat": {"interval_s": 1, "grace_s": GRACE_S, "max_retry": 2},
    "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "cnn_width": {"choices": [4, 8]}},
    "fixed": {"epochs": 2},
}
STUDY = "tiny-tiny"  # <experiment>-<sweep file stem>
FINISHED = ("COMPLETE", "PRUNED")
# "[worker 2] trial 3: best val_macro_f1 0.1000 at epoch 1 (finished); MLflow run <id>"
RUN_LINE = re.compile(r"^(?:\[worker (\d+)\] )?trial (\d+): best val_macro_f1 \S+ at epoch \d+ \(\w+\); MLflow run (\w+)", re.M)


@pytest.fixture
def project(tmp_path, demo_root):
    return write_project(tmp_path, demo_root, "tiny", SWEEP, epochs=2)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GCS_DS_PATH", "MLFLOW_TRACKING_URI")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"})
    return env


def _start(project: Path, *args: str, log: str) -> tuple[subprocess.Popen, Path, Path]:
    """``flower-exp ARGS`` in the background (own process group), output to files."""
    out, err = project / f"{log}.out", project / f"{log}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flower_exp.cli", *args],
            cwd=project,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return proc, out, err


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (a test's own background sweep) if still alive."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _journal_study(project: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = project / "mlruns" / "optuna" / "journal.log"
    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))


def _local_client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def _runs(client) -> list:
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _check_study_and_runs(study, runs) -> tuple[str, dict]:
    """The study reached 4 finished trials, each with exactly one FINISHED child run under the
    one parent run, carrying the trial's number and params. Returns (parent id, children by number)."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in FINISHED]
    assert len(finished) == 4, _states(study)
    assert len(trials) == 4, f"more trials than asked for: {_states(study)}"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], _states(study)
    assert len({t.number for t in trials}) == len(trials)

    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"]
    assert len(parents) == 1, [(r.info.run_id, r.info.status) for r in parents]
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs[ATTR_PARENT]
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_STATE] == "finished"

    children = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    assert children and all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children)
    assert all(r.data.tags["flower_exp.study"] == STUDY for r in children)
    by_number: dict[int, list] = {}
    for run in children:
        by_number.setdefault(int(run.data.tags["flower_exp.trial_number"]), []).append(run)
    for trial in finished:
        runs_of_trial = by_number.get(trial.number, [])
        assert len(runs_of_trial) == 1, (trial.number, [r.info.run_id for r in runs_of_trial])
        child = runs_of_trial[0]
        assert child.info.run_id == trial.user_attrs[ATTR_RUN]
        assert child.info.status == "FINISHED"
        assert child.data.tags[TAG_STATE] == trial.state.name.lower().replace("complete", "finished")
        assert child.data.tags["flower_exp.optuna_state"] == trial.state.name
        assert float(child.data.params["lr_max"]) == trial.params["lr_max"]
        assert int(child.data.params["cnn_width"]) == trial.params["cnn_width"]
        assert int(child.data.params["epochs"]) == 2
        if trial.state.name == "COMPLETE":
            assert child.data.metrics["best_val_macro_f1"] == pytest.approx(trial.value)
    return parent.info.run_id, {n: rs[0] for n, rs in by_number.items()}


# --------------------------------------------------------------------------- local workers


@pytest.mark.slow
def test_two_local_workers_share_the_journal_study_and_status_reports_it(cli, project):
    result = cli("sweep", "-s", "tiny", "--workers", "2", "--trials", "4", "--seed", "7", cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "mlruns" / "optuna" / "journal.log").is_file()

    study = _journal_study(project)
    # The workers drew with --seed 7, not the sweep file's seed: the params of each trial
    # number are those the seed gives that number.
    import optuna

    from flower_exp.config import SamplerConfig, load_sweep
    from flower_exp.study.sampling import make_sampler, suggest

    params = load_sweep(project / "sweeps" / "tiny.yaml").params
    expected = optuna.create_study(sampler=make_sampler(SamplerConfig(**SWEEP["sampler"]), params, seed=7))
    drawn = [suggest(expected.ask(), params, {}) for _ in range(4)]
    assert {t.number: t.params for t in study.get_trials(deepcopy=False)} == dict(enumerate(drawn))
    parent_id, children = _check_study_and_runs(study, _runs(_local_client(project)))
    assert f"MLflow parent run: {parent_id}" in result.stdout

    # Two processes did the work: the parent spawned two distinct pids, and every child run
    # was reported by the worker that trained it, both workers taking part.
    pids = re.search(r"started 2 worker processes: (\d+), (\d+)", result.stderr)
    assert pids and pids.group(1) != pids.group(2), result.stderr[-2000:]
    reported = {m.group(3): (int(m.group(1)), int(m.group(2))) for m in RUN_LINE.finditer(result.stdout)}
    assert set(reported) == {run.info.run_id for run in children.values()}, result.stdout
    assert all(reported[run.info.run_id][1] == number for number, run in children.items())
    assert {worker for worker, _ in reported.values()} == {1, 2}, result.stdout

    status = cli("status", "-s", "tiny", cwd=project)
    assert status.returncode == 0, status.stderr
    trials = study.get_trials(deepcopy=False)
    n_complete = sum(t.state.name == "COMPLETE" for t in trials)
    n_pruned = sum(t.state.name == "PRUNED" for t in trials)
    assert f"{n_complete} complete, {n_pruned} pruned, 0 failed, 0 running, 0 waiting" in status.stdout, status.stdout
    best = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)[0]
    assert f"best: trial {best.number} val_macro_f1 {best.value:.4f}" in status.stdout, status.stdout
    assert f"MLflow run {best.user_attrs[ATTR_RUN]}" in status.stdout
    assert f"MLflow parent run: {parent_id}" in status.stdout


# --------------------------------------------------------------------------- a killed worker


@pytest.mark.slow
def test_sigkilled_trial_is_failed_and_retried_on_rerun(cli, project):
    from mlflow.exceptions import MlflowException

    args = ("sweep", "-s", "tiny", "--trials", "3")
    proc, out, err = _start(project, *args, log="killed")
    client = None  # not before the sweep has created the MLflow store (no concurrent migrations)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None:
            assert proc.poll() is None, f"sweep ended before it could be killed:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no running trial with an MLflow run:\n{err.read_text()[-3000:]}"
            time.sleep(0.5)
            if not (project / "mlruns" / "optuna" / "journal.log").is_file():
                continue
            try:
                study = _journal_study(project)
            except KeyError:  # the study is not created yet
                continue
            running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and ATTR_RUN in t.user_attrs]
            if running:
                client = client or _local_client(project)
                try:
                    if client.get_run(running[0].user_attrs[ATTR_RUN]).info.status == "RUNNING":
                        victim = running[0]
                except MlflowException:
                    continue
        parent_id = study.user_attrs[ATTR_PARENT]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == -signal.SIGKILL

    # Still RUNNING in both stores: nobody marked it. Wait until its heartbeat is stale.
    study = _journal_study(project)
    dead = study.get_trials(deepcopy=False)[victim.number]
    assert dead.state.name == "RUNNING"
    assert client.get_run(victim.user_attrs[ATTR_RUN]).info.status == "RUNNING"
    last_beat = dead.system_attrs.get(HEARTBEAT_ATTR, dead.datetime_start.timestamp())
    time.sleep(max(0.0, last_beat + GRACE_S + 1.5 - time.time()))

    result = cli(*args, cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming study" in result.stderr

    study = _journal_study(project)
    trials = study.get_trials(deepcopy=False)
    killed = trials[victim.number]
    assert killed.state.name == "FAIL", _states(study)
    retries = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == victim.number]
    assert len(retries) == 1, _states(study)
    retry = retries[0]
    assert retry.number > victim.number and retry.state.name == "COMPLETE"
    assert retry.params == victim.params
    assert retry.system_attrs.get("failed_trial") == victim.number
    finished = [t for t in trials if t.state.name in FINISHED]
    assert len(finished) == 3 and len({t.number for t in finished}) == 3, _states(study)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], _states(study)

    runs = _runs(client)
    dead_run = client.get_run(victim.user_attrs[ATTR_RUN])
    assert dead_run.info.status == "FAILED"
    assert dead_run.data.tags[TAG_STATE] == "failed"
    assert "worker died" in dead_run.data.tags["flower_exp.error"]
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"]
    assert [r.info.run_id for r in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags[TAG_STATE] == "finished"
    assert study.user_attrs[ATTR_PARENT] == parent_id

    children = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    # The retry trained in a new child run; the dead one stays FAILED next to it.
    assert len(children) == 4
    retry_run = client.get_run(retry.user_attrs[ATTR_RUN])
    assert retry_run.info.run_id != dead_run.info.run_id
    assert retry_run.info.status == "FINISHED"
    assert retry_run.data.tags["flower_exp.trial_number"] == str(retry.number)
    assert retry_run.data.tags["flower_exp.retry_of_trial"] == str(victim.number)
    for trial in finished:
        run = client.get_run(trial.user_attrs[ATTR_RUN])
        assert run.info.status == "FINISHED" and run.data.tags["flower_exp.trial_number"] == str(trial.number)


def test_retried_trial_is_not_stale_when_a_worker_picks_it_up(tmp_path):
    """The retry copies the dead trial's system attrs; its stale heartbeat must not make the
    retry look dead in the moment between a worker popping it and its first heartbeat."""
    import optuna
    from optuna.storages import fail_stale_trials

    from flower_exp.config import HeartbeatConfig
    from flower_exp.study import open_storage
    from flower_exp.study.storage import StaleTrialHandler
    from flower_exp.tracking import TrackingTarget

    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    storage = open_storage(
        str(tmp_path / "journal.log"), HeartbeatConfig(interval_s=1, grace_s=2), StaleTrialHandler(target, "tiny", 2)
    )
    study = optuna.create_study(study_name="s", storage=storage)
    with warnings.catch_warnings():  # Optuna: heartbeats outside Study.optimize, experimental API
        warnings.simplefilter("ignore")
        dead = study.ask()
        storage.record_heartbeat(dead._trial_id)
        time.sleep(2.5)  # the worker died: no heartbeat for longer than grace_s
        fail_stale_trials(study)
        assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
        retry = study.ask()  # another worker pops the re-queued trial...
    assert retry.number == 1 and study.trials[1].user_attrs[ATTR_RETRY_OF] == 0
    # ...and before its first heartbeat, a third worker checks for dead trials.
    assert storage._get_stale_trial_ids(study._study_id) == []


def test_tracker_joins_an_experiment_another_machine_created_meanwhile(tmp_path, monkeypatch):
    """Two machines starting the same sweep on a fresh tracking server both find no MLflow
    experiment; the one whose create loses the race must use the winner's."""
    from mlflow.tracking import MlflowClient

    from flower_exp.tracking import Tracker, TrackingTarget

    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    winner = MlflowClient(tracking_uri=target.uri).create_experiment("tiny")
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def not_there_yet(self, name):  # the first lookup ran before the other machine's create
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_there_yet)
    assert Tracker(target, "tiny").experiment_id == winner
    assert len(calls) == 2


# --------------------------------------------------------------------------- two machines


@pytest.mark.slow
def test_two_sweep_processes_on_postgres_and_tracking_server(project, fresh_postgres_db, postgres_url, mlflow_server):
    import optuna
    from mlflow.tracking import MlflowClient

    from servers import create_database

    tracking_uri = mlflow_server(backend_uri=create_database(postgres_url), artifact_dir=project / "server-artifacts")
    # The test cluster trusts every local connection, so a password is accepted (and ignored).
    storage = fresh_postgres_db.replace("postgresql+psycopg2://postgres@", "postgresql+psycopg2://postgres:secret@")
    assert ":secret@" in storage
    args = ("sweep", "-s", "tiny", "--trials", "4", "--storage", storage, "--tracking-uri", tracking_uri)
    machines = [_start(project, *args, log=f"machine{i}") for i in (1, 2)]
    try:
        for proc, _, _ in machines:
            proc.wait(timeout=600)
    finally:
        for proc, _, _ in machines:
            _stop(proc)
    outputs = [(out.read_text(), err.read_text()) for _, out, err in machines]
    for (proc, _, _), (stdout, stderr) in zip(machines, outputs):
        assert proc.returncode == 0, stderr[-3000:]
        assert "secret" not in stdout and "secret" not in stderr, stdout + stderr
        assert ":***@" in stderr  # the storage is shown, redacted
    assert not (project / "mlruns" / "optuna").exists()  # nothing went to the local journal

    study = optuna.load_study(study_name=STUDY, storage=fresh_postgres_db)
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = _runs(client)
    parent_id, children = _check_study_and_runs(study, runs)
    # Both machines trained trials, each in its own child run of the one parent.
    trained = [{m.group(3) for m in RUN_LINE.finditer(stderr)} for _, stderr in outputs]
    assert all(trained), [stderr[-1500:] for _, stderr in outputs]
    assert not trained[0] & trained[1]
    assert trained[0] | trained[1] == {run.info.run_id for run in children.values()}
    for stdout, _ in outputs:
        assert f"MLflow parent run: {parent_id}" in stdout

    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert "secret" not in value, (run.info.run_id, key, value)
    parent = client.get_run(parent_id)
    assert parent.data.params["storage"].endswith(fresh_postgres_db.split("@", 1)[1])
    assert ":***@" in parent.data.params["storage"]


def test_a_worker_stopped_by_an_error_fails_the_sweep(tmp_path, capfd):
    """A worker that exits with an error (here: its experiment is unknown, exit 2) makes the
    sweep fail too instead of exiting 0 with its study short."""
    from flower_exp.errors import FlowerExpError
    from flower_exp.study.options import SweepSpec
    from flower_exp.study.workers import _run_processes

    project = write_project(tmp_path, str(tmp_path / "data"), "tiny", SWEEP)
    spec = SweepSpec(
        config_path=str(project / "experiments.yaml"),
        experiment="missing",
        sweep_path=str(project / "sweeps" / "tiny.yaml"),
        study_name=STUDY,
        storage_url=str(project / "journal.log"),
        tracking=None,
        parent_run_id="",
        total_trials=1,
        deadline=None,
        quiet=True,
    )
    with pytest.raises(FlowerExpError, match=r"2 of 2 worker\(s\) stopped with an error: .*\(exit 2\)"):
        _run_processes(spec, 2, lambda m: None)
    assert "[worker 1] error:" in capfd.readouterr().err
