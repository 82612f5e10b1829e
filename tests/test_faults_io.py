"""Injected I/O faults (issue 6, faults 4, 5 and 8): the MLflow tracking server going away
mid-sweep, a full or unwritable disk under run artifacts and exports, and configurations too
large for memory. Each test checks the one-line error, that the Optuna study and the MLflow
runs agree (no COMPLETE trial without its recorded result, nothing left RUNNING) and that a
rerun once the fault is gone completes the requested trials."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

import servers
from conftest import assert_one_line_error
from flower_exp import memory_estimate
from flower_exp.config import HeartbeatConfig, load_experiment
from flower_exp.errors import FlowerExpError, MemoryTooLarge
from flower_exp.study import SweepOptions, open_storage, run_sweep
from flower_exp.study.names import ATTR_FAIL, ATTR_NOT_RECORDED, ATTR_RETRY_OF, ATTR_RUN
from flower_exp.tracking import TAG_ERROR, TAG_STATE, Tracker, TrackingTarget

HUGE_BATCH = 100_000_000  # ~1 PB of activations at 64 px: beyond any machine this runs on
SWEEP = {
    "trials": 3,
    "sampler": {"name": "random", "seed": 5},
    "pruner": {"name": "none"},
    "heartbeat": {"interval_s": 5, "grace_s": 30},
    "params": {
        "cnn_width": {"choices": [4, 8]},
        "lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True},
    },
    "fixed": {"epochs": 3, "cnn_depth": 2},
}
TINY = {
    "image_size": 32,
    "batch_size_per_replica": 16,
    "shuffle_buffer": 64,
    "lr_rampup_epochs": 0,
    "lr_sustain_epochs": 1,
    "cnn_depth": 2,
    "epochs": 2,
}


@pytest.fixture
def project(tmp_path, demo_root):
    (tmp_path / "experiments.yaml").write_text(
        yaml.safe_dump({"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY}}})
    )
    (tmp_path / "sweeps").mkdir()
    write_sweep(tmp_path, SWEEP)
    return tmp_path


def write_sweep(project: Path, sweep: dict) -> None:
    (project / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))


def load_study(project: Path):
    import optuna

    store = open_storage(str(project / "mlruns" / "optuna" / "journal.log"), HeartbeatConfig())
    return optuna.load_study(study_name="tiny-tiny", storage=store)


def states(study) -> Counter:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def local_tracker(project: Path) -> Tracker:
    mlruns = project / "mlruns"
    return Tracker(TrackingTarget(f"sqlite:///{mlruns / 'mlflow.db'}", str(mlruns / "artifacts")), "tiny")


def assert_study_matches_mlflow(study, client) -> None:
    """Every COMPLETE trial's run is FINISHED with the trial's value; nothing is RUNNING."""
    for trial in study.get_trials(deepcopy=False):
        assert trial.state.name not in ("RUNNING",), trial
        run_id = trial.user_attrs.get(ATTR_RUN)
        if trial.state.name == "COMPLETE":
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "finished"
            assert run.data.metrics["best_val_macro_f1"] == pytest.approx(trial.value)
        elif run_id:
            assert client.get_run(run_id).info.status == "FAILED", (trial.number, trial.user_attrs)


def assert_last_line_error(stderr: str, returncode: int, *fragments: str) -> str:
    """A user error after progress lines (sweep, best): exit 2, no traceback, the last line
    is the error naming what failed."""
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("GCS_DS_PATH", "MLFLOW_TRACKING_URI") and not k.startswith("MLFLOW_HTTP")
    }
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", **extra})
    return env


@contextlib.contextmanager
def _tmpfs_or_read_only(folder: Path, mount_options: str, cannot_mount: str):
    """As root (which ignores permissions): a tmpfs mounted on ``folder`` with ``mount_options``
    (the test is skipped with ``cannot_mount`` where that fails), yields True. Otherwise
    ``folder`` made read-only by permissions, yields False. Undone on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield False
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip(cannot_mount)
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def full_or_unwritable(folder: Path):
    """``folder`` on a real full filesystem (a tmpfs filled up; needs root) or, without root,
    made read-only. Yields the errno writes will fail with."""
    with _tmpfs_or_read_only(
        folder, "size=256k", "cannot mount a tmpfs here (root without CAP_SYS_ADMIN) and root ignores permissions"
    ) as mounted:
        if not mounted:
            yield errno.EACCES
            return
        with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        yield errno.ENOSPC


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only even for root (a read-only tmpfs mount), else by permissions."""
    with _tmpfs_or_read_only(folder, "ro,size=64k", "cannot mount a read-only tmpfs here and root ignores permissions"):
        yield


# --------------------------------------------------------------------------- fault 4: tracking server


def test_tracking_server_down_mid_trial_fails_clearly_and_rerun_completes(project, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    backend, artifacts = f"sqlite:///{server_dir / 'mlflow.db'}", server_dir / "artifacts"
    write_sweep(project, {**SWEEP, "trials": 2, "fixed": {"epochs": 2, "cnn_depth": 2}})
    env = cli_env(FLOWER_EXP_TRACKING_RETRIES="1")
    with contextlib.ExitStack() as first:
        url = first.enter_context(servers.mlflow_server_process(backend, artifacts, log_path=server_dir / "log"))
        command = [sys.executable, "-m", "flower_exp.cli", "sweep", "-s", "tiny", "--tracking-uri", url]
        proc = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "trial 1: epoch 1/2" in line:
                # Trial 0 is recorded, trial 1 half-way. Freeze the sweep while the server
                # stops, so that trial 1 cannot finish first.
                proc.send_signal(signal.SIGSTOP)
                break
        else:
            pytest.fail("the sweep ended before trial 1 trained:\n" + "".join(seen[-30:]))
    proc.send_signal(signal.SIGCONT)  # the server is gone now
    stdout, rest = proc.communicate(timeout=300)
    stderr = "".join(seen) + rest
    assert_last_line_error(stderr, proc.returncode, "error: trial 1: result not recorded", url)

    study = load_study(project)
    counts = states(study)
    assert counts["RUNNING"] == 0 and counts["FAIL"] == 1 and counts["WAITING"] == 1, counts
    failed = [t for t in study.trials if t.state.name == "FAIL"][0]
    assert url in failed.user_attrs[ATTR_NOT_RECORDED] and ATTR_FAIL not in failed.user_attrs  # not budget used
    waiting = [t for t in study.trials if t.state.name == "WAITING"][0]
    assert waiting.user_attrs[ATTR_RETRY_OF] == failed.number
    assert waiting.system_attrs["fixed_params"] == failed.params  # the same configuration runs again

    # The server is back (same port, same store): the same command completes the requested trials.
    monkeypatch.setattr(servers, "free_port", lambda: int(url.rsplit(":", 1)[1]))
    with contextlib.ExitStack() as second:
        assert second.enter_context(servers.mlflow_server_process(backend, artifacts, log_path=server_dir / "log")) == url
        again = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        study = load_study(project)
        assert states(study) == Counter(COMPLETE=2, FAIL=1), states(study)
        client = MlflowClient(url)
        assert_study_matches_mlflow(study, client)
        parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.tags[TAG_STATE] == "finished"
        children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert not [r for r in children if r.info.status == "RUNNING"]
        if failed.user_attrs.get(ATTR_RUN):  # the run cut off mid-trial was closed by its retry
            assert "re-run as trial" in client.get_run(failed.user_attrs[ATTR_RUN]).data.tags[TAG_ERROR]


def test_unreachable_tracking_server_at_start_fails_fast(cli, project):
    url = f"http://127.0.0.1:{servers.free_port()}"
    # MLflow's own retries (7, ~2 minutes) are left on: the check must not wait for them
    # (the timeout is a safety net, not the assertion).
    result = cli(
        "sweep", "-s", "tiny", "--tracking-uri", url, cwd=project, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"}, timeout=110
    )
    assert_one_line_error(result, f"MLflow tracking server {url}: unreachable", "Connection refused")
    assert not (project / "mlruns" / "mlflow.db").exists()


# --------------------------------------------------------------------------- fault 5: disk full / unwritable


def test_full_artifact_store_fails_the_trial_and_rerun_completes(project):
    write_sweep(project, {**SWEEP, "trials": 1, "fixed": {"epochs": 1, "cnn_depth": 2}})
    experiment_artifacts = project / "mlruns" / "artifacts" / "tiny"
    with full_or_unwritable(experiment_artifacts) as code:
        with pytest.raises(FlowerExpError) as caught:
            run_sweep(SweepOptions(sweep="tiny", config=project / "experiments.yaml", quiet=True), log=lambda m: None)
    message = str(caught.value)
    assert "\n" not in message and "trial 0: result not recorded" in message
    assert str(experiment_artifacts) in message and os.strerror(code) in message, message
    study = load_study(project)
    assert states(study) == Counter(FAIL=1, WAITING=1)
    tracker = local_tracker(project)
    run = tracker.client.get_run(study.trials[0].user_attrs[ATTR_RUN])
    assert run.info.status == "FAILED" and os.strerror(code) in run.data.tags[TAG_ERROR]

    run_sweep(SweepOptions(sweep="tiny", config=project / "experiments.yaml", quiet=True), log=lambda m: None)
    study = load_study(project)
    assert states(study) == Counter(COMPLETE=1, FAIL=1)
    assert study.trials[1].params == study.trials[0].params  # the same configuration, now recorded
    assert_study_matches_mlflow(study, tracker.client)
    for trial in study.trials[1:]:
        assert "model/model.keras" in {a.path for a in tracker.client.list_artifacts(trial.user_attrs[ATTR_RUN], "model")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """Two finished runs in a project's local store (for `best --export`)."""
    from flower_exp.train import run

    project = tmp_path_factory.mktemp("faults-best")
    (project / "experiments.yaml").write_text(
        yaml.safe_dump({"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY, "epochs": 1}}})
    )
    (project / "mlruns").mkdir()
    tracker = local_tracker(project)
    for width in (4, 8):
        run(load_experiment(config=project, overrides=[f"cnn_width={width}"]), tracker=tracker, progress=None)
    return project


def ensemble_runs(project: Path) -> int:
    tracker = local_tracker(project)
    return len(tracker.client.search_runs([tracker.experiment_id], "tags.`flower_exp.kind` = 'ensemble'"))


def test_best_export_onto_read_only_parent_refused_before_any_work(cli, trained, tmp_path):
    before = ensemble_runs(trained)
    target = tmp_path / "ro" / "exports" / "v1"
    with read_only(tmp_path / "ro"):
        result = cli("best", "--top", "2", "--trials", "3", "--export", str(target), cwd=trained)
        assert_one_line_error(result, str(target), "nothing written")
        assert not (tmp_path / "ro" / "exports").exists()
    assert ensemble_runs(trained) == before  # refused up front, not after the weight search


def test_best_export_onto_full_disk_leaves_nothing(cli, trained, tmp_path):
    target = tmp_path / "full" / "v1"
    with full_or_unwritable(tmp_path / "full") as code:
        if code != errno.ENOSPC:
            pytest.skip("needs a real full filesystem (root); test_export covers an injected ENOSPC")
        result = cli("best", "--top", "2", "--trials", "3", "--export", str(target), cwd=trained)
        assert_last_line_error(result.stderr, result.returncode, str(target), "No space left on device", "nothing written")
        assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["filler"]  # no export, no temp folder


# --------------------------------------------------------------------------- fault 8: out of memory


def test_memory_estimate_scales_with_pixels_and_batch(project, monkeypatch):
    monkeypatch.setattr(memory_estimate, "available_memory", lambda: ("host RAM", 10 * 2**30))
    exp = load_experiment(config=project, overrides=["image_size=32"])
    small = memory_estimate.estimate_training_memory(exp.config, 4)
    big = memory_estimate.estimate_training_memory(
        exp.config.model_copy(update={"image_size": 64, "batch_size_per_replica": 32}), 4
    )
    # Activations dominate a tiny CNN: 4x the pixels and 2x the batch need close to 8x.
    assert 6 * small.needed < big.needed < 8.5 * small.needed
    assert small.available == 10 * 2**30 and small.device == "host RAM"

    warnings: list[str] = []
    for factor, outcome in ((0.5, "ok"), (1.5, "warn"), (2.5, "refuse")):
        available = int(small.needed / factor)
        monkeypatch.setattr(memory_estimate, "available_memory", lambda a=available: ("host RAM", a))
        if outcome == "refuse":
            with pytest.raises(MemoryTooLarge, match="needs at least .* but the host RAM available is"):
                memory_estimate.check_memory(exp.config, 4, warnings.append)
        else:
            memory_estimate.check_memory(exp.config, 4, warnings.append)
        assert len(warnings) == (outcome != "ok")
    skip = exp.config.model_copy(update={"memory_check": False})
    assert memory_estimate.check_memory(skip, 4, warnings.append) is None


def test_host_available_memory_honours_cgroup_limit(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory_estimate.host_available_bytes(str(tmp_path / "meminfo"), str(cgroup)) == 8_000_000 * 1024
    (cgroup / "memory.max").write_text(f"{2 * 2**30}\n")
    (cgroup / "memory.current").write_text(f"{2**30}\n")
    assert memory_estimate.host_available_bytes(str(tmp_path / "meminfo"), str(cgroup)) == 2**30
    (cgroup / "memory.max").write_text("max\n")
    assert memory_estimate.host_available_bytes(str(tmp_path / "meminfo"), str(cgroup)) == 8_000_000 * 1024


def test_train_refuses_an_out_of_memory_config_up_front(cli, project):
    result = cli("train", "--set", "image_size=64", "--set", f"batch_size_per_replica={HUGE_BATCH}", cwd=project)
    assert_one_line_error(result, "image_size 64", f"batch_size_per_replica {HUGE_BATCH}", "memory_check=false")
    assert not (project / "mlruns" / "mlflow.db").exists()  # refused before any run was created


def test_sweep_refused_and_oom_trials_fail_and_the_sweep_continues(project, monkeypatch):
    import keras
    import tensorflow as tf

    real_fit = keras.Model.fit
    calls = []

    def fit_oom_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the estimate let it through, the device did not
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[16,32,32,8]")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_oom_once)
    sweep = {
        **SWEEP,
        "trials": 3,
        "fixed": {"epochs": 1, "cnn_depth": 2},
        "params": {**SWEEP["params"], "batch_size_per_replica": {"choices": [16, HUGE_BATCH]}},
        "enqueue": [
            {"batch_size_per_replica": HUGE_BATCH},
            {"batch_size_per_replica": 16},
            {"batch_size_per_replica": 16, "cnn_width": 4},
        ],
    }  # the third trains (not left to a draw)
    write_sweep(project, sweep)
    run_sweep(SweepOptions(sweep="tiny", config=project / "experiments.yaml", quiet=True), log=lambda m: None)

    study = load_study(project)
    trials = study.get_trials(deepcopy=False)
    refused, oom = trials[0], trials[1]
    assert refused.state.name == "FAIL" and refused.params["batch_size_per_replica"] == HUGE_BATCH
    assert refused.user_attrs[ATTR_FAIL].startswith("MemoryTooLarge: cnn at image_size 32")
    assert ATTR_RUN not in refused.user_attrs  # refused before an MLflow run existed
    assert oom.state.name == "FAIL" and oom.user_attrs[ATTR_FAIL].startswith("OutOfMemory: out of memory training cnn")
    tracker = local_tracker(project)
    run = tracker.client.get_run(oom.user_attrs[ATTR_RUN])
    assert run.info.status == "FAILED" and "OOM when allocating" in run.data.tags[TAG_ERROR]
    assert not tracker.client.list_artifacts(run.info.run_id, "model")  # no model for a failed run
    # Both failures used up budget (they are the configuration's), and the sweep went on.
    counts = states(study)
    assert counts["COMPLETE"] >= 1 and counts["RUNNING"] == 0 and sum(counts.values()) >= 3, counts
    assert_study_matches_mlflow(study, tracker.client)


def test_http_retries_are_bounded_unless_the_user_set_them(monkeypatch):
    from flower_exp.tracking import bound_http_retries

    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "FLOWER_EXP_TRACKING_RETRIES",
        "FLOWER_EXP_TRACKING_BACKOFF_FACTOR",
        "FLOWER_EXP_TRACKING_TIMEOUT_S",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOWER_EXP_TRACKING_TIMEOUT_S", "9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "3")  # the user's own setting wins
    bound_http_retries()
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    # 4 retries with factor 1: about 0 + 2 + 4 + 8 s of backoff per call instead of ~2 minutes.
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 4
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 3
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 9
