"""Fault injection on real sweep processes: Ctrl-C and SIGTERM (one process, two workers, the
signal sent to the parent alone), a SIGKILLed parent of two workers, SIGKILL of one of two
workers (journal file and PostgreSQL), a NaN trial inside a sweep, resuming without replaying
the sampler's draws, and a smoke run of the soak script (scripts/soak.py). A SIGKILLed
single-worker sweep resumed by a rerun is
tests/test_sweep_distributed.py::test_sigkilled_trial_is_failed_and_retried_on_rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flower_exp.config import ParamSpec, SamplerConfig
from flower_exp.errors import Interrupted
from flower_exp.signals import STOP_SIGNALS, exit_status, interrupt_once
from flower_exp.study.names import ATTR_FAIL, ATTR_PARENT, ATTR_RETRY_OF, ATTR_RUN
from flower_exp.study.sampling import make_sampler, suggest
from flower_exp.tracking import TAG_ERROR, TAG_KIND, TAG_STATE
from projects import TINY
from test_sweep_distributed import STUDY, _journal_study, _local_client, _runs, _start, _stop

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 4
# Long enough (in epochs) that a signal sent after "epoch 1/N" lands inside the trial.
LONG_EPOCHS = 120
MID_EPOCHS = 16


def _sweep(epochs: int, trials: int = 2, **extra) -> dict:
    return {
        "trials": trials,
        "sampler": {"name": "random", "seed": 1},
        "pruner": {"name": "none"},
        "heartbeat": {"interval_s": 1, "grace_s": GRACE_S, "max_retry": 2},
        "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "cnn_width": {"choices": [4, 8]}},
        "fixed": {"epochs": epochs},
        **extra,
    }


def _project(root: Path, demo_root: str, sweep: dict) -> Path:
    # No early stopping: a trial lasts all its epochs, which keeps it killable.
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY, "early_stopping_patience": 1000}}}
    (root / "experiments.yaml").write_text(yaml.safe_dump(config))
    (root / "sweeps").mkdir(exist_ok=True)
    (root / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return root


def _wait_for(pattern: str, *files: Path, proc: subprocess.Popen, timeout: float = 300) -> re.Match:
    """Until ``pattern`` appears in one of ``files`` (the process's output)."""
    regex = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while True:
        text = "".join(f.read_text() for f in files if f.exists())
        found = regex.search(text)
        if found:
            return found
        assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} yet:\n{text[-3000:]}"
        time.sleep(0.05)


def _wait_mid_trial(prefix: str, log: Path, proc: subprocess.Popen, epochs: int, timeout: float = 300) -> int:
    """Until the newest trial in ``log`` (lines starting with ``prefix``) is in its first half
    of epochs and not ended; returns its number."""
    line = re.compile(rf"^{re.escape(prefix)}trial (\d+): epoch (\d+)/{epochs}\b", re.M)
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        found = line.findall(text)
        if found:
            number, epoch = found[-1]
            ended = re.search(rf"^{re.escape(prefix)}trial {number} (complete|failed|pruned)", text, re.M)
            if int(epoch) <= epochs // 2 and not ended:
                return int(number)
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no trial in its first epochs:\n{text[-3000:]}"
        time.sleep(0.05)


def _wait_exit(proc: subprocess.Popen, bound_s: float = 60) -> int:
    """The exit status, which must come before a generous bound (not a timing assertion)."""
    try:
        return proc.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"still running {bound_s} s after the signal")


def _check_interrupted(project: Path, numbers: set[int], how: str = "") -> None:
    """Trials ``numbers`` FAIL (not counted against the budget), their runs and the parent
    KILLED (their error saying ``interrupted (HOW)``), nothing left RUNNING, and the journal
    still reads."""
    study = _journal_study(project)  # raises if the journal were half-written
    trials = study.get_trials(deepcopy=False)
    assert {t.number for t in trials if t.state.name == "FAIL"} == numbers, [t.state.name for t in trials]
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    client = _local_client(project)
    for number in numbers:
        trial = trials[number]
        assert ATTR_FAIL not in trial.user_attrs  # interrupted is not the trial's own failure
        run = client.get_run(trial.user_attrs[ATTR_RUN])
        assert run.info.status == "KILLED" and run.data.tags[TAG_STATE] == "killed"
        assert f"interrupted ({how}" in run.data.tags[TAG_ERROR]
    parent = client.get_run(study.user_attrs[ATTR_PARENT])
    assert parent.info.status == "KILLED" and parent.data.tags[TAG_STATE] == "killed"
    assert not [r for r in _runs(client) if r.info.status == "RUNNING"]


# --------------------------------------------------------------------------- Ctrl-C


def _stop_one_worker_mid_trial_then_rerun(cli, project: Path, send: Callable[[int], None], status: int, how: str) -> None:
    """``send(pid)`` stops a one-worker sweep mid-trial: exit ``status`` without a traceback,
    the trial FAIL, its run and the parent KILLED; the rerun completes, its trial not a
    heartbeat retry (the stopped one was marked at once, nothing waited out the grace)."""
    args = ("sweep", "-s", "tiny", "--trials", "1")
    proc, out, err = _start(project, *args, log="interrupted")
    try:
        _wait_for(rf"^trial 0: epoch 1/{LONG_EPOCHS}", err, proc=proc)
        send(proc.pid)
        assert _wait_exit(proc) == status, err.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "Traceback" not in err.read_text(), err.read_text()[-3000:]
    _check_interrupted(project, {0}, how)

    # A short rerun: only that it completes matters.
    (project / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(_sweep(2), sort_keys=False))
    result = cli(*args, cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming study" in result.stderr and "running elsewhere" not in result.stderr
    study = _journal_study(project)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert ATTR_RETRY_OF not in trials[1].user_attrs
    client = _local_client(project)
    parent = client.get_run(study.user_attrs[ATTR_PARENT])
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_STATE] == "finished"
    children = [r for r in _runs(client) if r.data.tags.get(TAG_KIND) == "trial"]
    assert sorted(r.info.status for r in children) == ["FINISHED", "KILLED"]


def _twice(send_once: Callable[[int], None]) -> Callable[[int], None]:
    """Send a signal, and again 0.2 s later (an impatient user, or a scheduler insisting)."""

    def send(pid: int) -> None:
        send_once(pid)
        time.sleep(0.2)
        send_once(pid)

    return send


@pytest.mark.slow
def test_ctrl_c_twice_during_a_trial_exits_130_marks_it_and_the_rerun_completes(cli, tmp_path, demo_root):
    # What Ctrl-C sends: SIGINT to the whole foreground group.
    ctrl_c = _twice(lambda pid: os.killpg(pid, signal.SIGINT))
    _stop_one_worker_mid_trial_then_rerun(cli, _project(tmp_path, demo_root, _sweep(LONG_EPOCHS)), ctrl_c, 130, "Ctrl-C")


@pytest.mark.slow
def test_sigterm_during_a_trial_exits_143_marks_it_and_the_rerun_completes(cli, tmp_path, demo_root):
    # What timeout, Slurm, Kubernetes and a VM shutdown send: SIGTERM to the process.
    sigterm = _twice(lambda pid: os.kill(pid, signal.SIGTERM))
    _stop_one_worker_mid_trial_then_rerun(cli, _project(tmp_path, demo_root, _sweep(LONG_EPOCHS)), sigterm, 143, "SIGTERM")


def test_sigterm_during_train_exits_143_and_marks_the_run_killed(tmp_path, demo_root):
    project = _project(tmp_path, demo_root, _sweep(LONG_EPOCHS))
    proc, out, err = _start(project, "train", "-q", "--set", f"epochs={LONG_EPOCHS}", log="train")
    try:
        _wait_for(rf"^epoch 1/{LONG_EPOCHS}", err, proc=proc)
        os.kill(proc.pid, signal.SIGTERM)
        assert _wait_exit(proc) == 143, err.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "Traceback" not in err.read_text(), err.read_text()[-3000:]
    [run] = _runs(_local_client(project))
    assert run.info.status == "KILLED" and run.data.tags[TAG_STATE] == "killed"
    assert run.data.tags[TAG_ERROR] == "interrupted (SIGTERM)"


@pytest.mark.slow
def test_ctrl_c_with_two_workers_marks_both_trials(tmp_path, demo_root):
    project = _project(tmp_path, demo_root, _sweep(LONG_EPOCHS))
    proc, out, err = _start(project, "sweep", "-s", "tiny", "--trials", "2", "--workers", "2", log="interrupted")
    try:
        for worker in (1, 2):
            _wait_for(rf"^\[worker {worker}\] trial \d+: epoch 1/{LONG_EPOCHS}", out, proc=proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert _wait_exit(proc) == 130, err.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "Traceback" not in err.read_text() + out.read_text(), err.read_text()[-3000:]
    _check_interrupted(project, {0, 1})


@pytest.fixture
def default_stop_signals():
    """The stop signals at their defaults for the test (``nohup`` or a batch system may have
    started the test run with SIGHUP ignored, which interrupt_once rightly keeps ignored)."""
    defaults = {signal.SIGINT: signal.default_int_handler}
    previous = {sig: signal.signal(sig, defaults.get(sig, signal.SIG_DFL)) for sig in STOP_SIGNALS}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_each_stop_signal_interrupts_once_then_is_ignored_while_marking(signum, default_stop_signals):
    """In-process: SIGINT, SIGTERM and SIGHUP alike raise Interrupted (exit status 128 + the
    signal); any stop signal after it is ignored; the handlers are restored after."""
    with interrupt_once():
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler raises here
        for again in STOP_SIGNALS:  # while the trial and runs are being marked
            os.kill(os.getpid(), again)
        time.sleep(0.1)
    assert caught.value.signum == signum and exit_status(caught.value) == 128 + signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_stop_signal_the_caller_ignores_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        with interrupt_once():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGHUP, previous)


def _start_two_workers_mid_trial(project: Path) -> tuple[subprocess.Popen, Path, Path, list[int]]:
    """A ``--workers 2`` sweep with both workers in their first epochs; and the workers' pids."""
    proc, out, err = _start(project, "sweep", "-s", "tiny", "--trials", "2", "--workers", "2", log="interrupted")
    try:
        pids = [int(p) for p in _wait_for(r"started 2 worker processes: (\d+), (\d+)", err, proc=proc).groups()]
        for worker in (1, 2):
            _wait_for(rf"^\[worker {worker}\] trial \d+: epoch 1/{LONG_EPOCHS}", out, proc=proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, out, err, pids


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a re-parented worker may never be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_sigterm_to_a_two_worker_parent_is_passed_on_and_marks_both_trials(tmp_path, demo_root):
    project = _project(tmp_path, demo_root, _sweep(LONG_EPOCHS))
    proc, out, err, _pids = _start_two_workers_mid_trial(project)
    try:
        os.kill(proc.pid, signal.SIGTERM)  # the parent alone: the workers hear it from the parent
        assert _wait_exit(proc) == 143, err.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "Traceback" not in err.read_text() + out.read_text(), err.read_text()[-3000:]
    assert "interrupted (SIGTERM)" in err.read_text()
    _check_interrupted(project, {0, 1})


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_of_a_sigkilled_parent_stop_and_mark_their_trials(tmp_path, demo_root):
    project = _project(tmp_path, demo_root, _sweep(LONG_EPOCHS))
    proc, out, _err, pids = _start_two_workers_mid_trial(project)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # nothing can be passed on: the workers must notice
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # a liveness bound, not a timing assertion
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in pids), out.read_text()[-3000:]
    finally:
        _stop(proc)  # the workers are in its process group
    assert "Traceback" not in out.read_text(), out.read_text()[-3000:]
    study = _journal_study(project)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # marked by the workers, not left RUNNING
    client = _local_client(project)
    assert [client.get_run(t.user_attrs[ATTR_RUN]).info.status for t in trials] == ["KILLED", "KILLED"]


# --------------------------------------------------------------------------- SIGKILL of one of two workers


def _check_one_worker_died(study, client, victim: int, total: int) -> int:
    """The dead worker's trial FAIL, its run FAILED, retried once to COMPLETE with the same
    params; ``total`` finished trials, numbers unique, nothing RUNNING. Returns the retry's number."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    dead = trials[victim]
    assert dead.state.name == "FAIL" and ATTR_FAIL not in dead.user_attrs, states
    retries = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == victim]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", states
    assert retries[0].params == dead.params
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == total and len(trials) == total + 1, states
    assert len({t.number for t in trials}) == len(trials)
    dead_run = client.get_run(dead.user_attrs[ATTR_RUN])
    assert dead_run.info.status == "FAILED" and "worker died" in dead_run.data.tags[TAG_ERROR]
    for trial in trials:
        if trial.state.name == "COMPLETE":
            run = client.get_run(trial.user_attrs[ATTR_RUN])
            assert run.info.status == "FINISHED"
            assert run.data.metrics["best_val_macro_f1"] == pytest.approx(trial.value)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=100)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = client.get_run(study.user_attrs[ATTR_PARENT])
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_STATE] == "finished"
    return retries[0].number


@pytest.mark.slow
def test_sigkill_of_one_of_two_local_workers_the_other_retries_its_trial(tmp_path, demo_root):
    project = _project(tmp_path, demo_root, _sweep(MID_EPOCHS))
    proc, out, err = _start(project, "sweep", "-s", "tiny", "--trials", "3", "--workers", "2", log="sweep")
    try:
        pids = _wait_for(r"started 2 worker processes: (\d+), (\d+)", err, proc=proc)
        victim = _wait_mid_trial("[worker 1] ", out, proc, MID_EPOCHS)
        os.kill(int(pids.group(1)), signal.SIGKILL)
        assert _wait_exit(proc, 600) == 0, err.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "1 worker(s) killed: flower-exp-worker-1 (signal 9)" in err.read_text()
    retry = _check_one_worker_died(_journal_study(project), _local_client(project), victim, 3)
    assert f"[worker 2] trial {retry} complete" in out.read_text()  # the survivor retried it


@pytest.mark.slow
def test_sigkill_of_one_of_two_machines_on_postgres_the_other_retries_its_trial(tmp_path, demo_root, fresh_postgres_db):
    import optuna

    from flower_exp.tracking import Tracker, default_target

    project = _project(tmp_path, demo_root, _sweep(MID_EPOCHS))
    Tracker(default_target(project), "tiny")  # the MLflow store exists: the machines can start together
    args = ("sweep", "-s", "tiny", "--trials", "3", "--storage", fresh_postgres_db)
    first, out1, err1 = _start(project, *args, log="machine1")
    second, out2, err2 = _start(project, *args, log="machine2")
    try:
        _wait_for(r"^trial \d+: epoch 1/", err2, proc=second)
        victim = _wait_mid_trial("", err1, first, MID_EPOCHS)
        os.killpg(first.pid, signal.SIGKILL)
        assert _wait_exit(second, 600) == 0, err2.read_text()[-3000:]
    finally:
        _stop(first)
        _stop(second)
    study = optuna.load_study(study_name=STUDY, storage=fresh_postgres_db)
    retry = _check_one_worker_died(study, _local_client(project), victim, 3)
    assert re.search(rf"^trial {retry} complete", err2.read_text(), re.M)  # the survivor retried it


# --------------------------------------------------------------------------- NaN loss


def test_nan_trial_fails_with_its_reason_and_the_sweep_continues(cli, tmp_path, demo_root):
    sweep = _sweep(2, trials=3, enqueue=[{"lr_max": 1.0e30, "cnn_width": 4}])
    project = _project(tmp_path, demo_root, sweep)
    result = cli("sweep", "-s", "tiny", "--quiet", cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 0 failed: NonFiniteLoss" in result.stderr

    study = _journal_study(project)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    nan_trial = trials[0]
    assert nan_trial.params["lr_max"] == 1.0e30
    assert nan_trial.user_attrs[ATTR_FAIL].startswith("NonFiniteLoss: training loss became")
    client = _local_client(project)
    run = client.get_run(nan_trial.user_attrs[ATTR_RUN])
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "failed"
    assert "NonFiniteLoss" in run.data.tags[TAG_ERROR] and "lower lr_max" in run.data.tags[TAG_ERROR]
    assert run.data.tags["flower_exp.optuna_state"] == "FAIL"
    # Its own failure uses up budget (a dead worker's would not): 3 trials as requested.
    assert "study tiny-tiny: 2 complete, 0 pruned, 1 failed" in result.stdout


# --------------------------------------------------------------------------- resuming: no replayed draws
# Optuna directly with a cheap objective: the sampler alone decides these params.

SAMPLED = {"lr_max": ParamSpec(low=1.0e-3, high=5.0e-3, log=True), "cnn_width": ParamSpec(choices=[4, 8, 16])}
GRID = {"lr_max": ParamSpec(choices=[1.0e-3, 2.0e-3]), "cnn_width": ParamSpec(choices=[4, 8, 16])}


def _study_in_parts(path: Path, cfg: SamplerConfig, parts: list[int], space: dict = SAMPLED) -> list[tuple]:
    """The params, by trial number, of a study run ``parts[0]`` trials, then resumed for
    ``parts[1]`` more and so on, each part by a new study and sampler (a rerun, another worker)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = JournalStorage(JournalFileBackend(str(path)))
    for n in parts:
        study = optuna.create_study(
            study_name="s", storage=storage, sampler=make_sampler(cfg, space), direction="maximize", load_if_exists=True
        )
        study.optimize(lambda trial: sum(map(float, suggest(trial, space, {}).values())), n_trials=n)
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_a_resumed_study_never_replays_draws_and_the_same_seed_repeats_them(tmp_path, name):
    cfg = SamplerConfig(name=name, seed=3, n_startup_trials=3)  # tpe: 3 random trials, then its model
    resumed = _study_in_parts(tmp_path / "resumed.log", cfg, [2, 2])
    assert len(set(resumed)) == 4, resumed  # was: trial 2 drew trial 0's params again
    assert _study_in_parts(tmp_path / "at-once.log", cfg, [4]) == resumed  # per trial number, as before


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_two_workers_on_one_study_draw_different_params(tmp_path, name):
    """Trials asked by two samplers while both run (TPE: constant liar) differ, as when one
    worker follows the other."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    cfg = SamplerConfig(name=name, seed=3, n_startup_trials=2)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    workers = [
        optuna.create_study(
            study_name="s", storage=storage, sampler=make_sampler(cfg, SAMPLED), direction="maximize", load_if_exists=True
        )
        for _ in range(2)
    ]
    for _round in range(3):
        asked = [(study, study.ask()) for study in workers]
        for study, trial in asked:
            study.tell(trial, sum(map(float, suggest(trial, SAMPLED, {}).values())))
    params = [tuple(sorted(t.params.items())) for t in workers[0].get_trials(deepcopy=False)]
    assert len(params) == 6 and len(set(params)) == 6, params


def test_a_resumed_grid_visits_every_point_once(tmp_path):
    cfg = SamplerConfig(name="grid", seed=3)
    resumed = _study_in_parts(tmp_path / "resumed.log", cfg, [2, 2, 2], GRID)
    assert len(set(resumed)) == 6, resumed
    assert _study_in_parts(tmp_path / "at-once.log", cfg, [6], GRID) == resumed


# --------------------------------------------------------------------------- the soak script


@pytest.mark.slow
def test_soak_script_smoke(tmp_path):
    summary_path = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "soak.py"),
            "--minutes",
            "0.3",
            "--kill-every",
            "6",
            "--epochs",
            "3",
            "--seed",
            "3",
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["mismatches"] == [] and summary["kills"] >= 1
    assert summary["finished"] == summary["final_sweep_trials"]
    assert summary["killed_trials"] == summary["killed_trials_retried"]
    assert "RUNNING" not in summary["trials_by_state"] and "WAITING" not in summary["trials_by_state"]
