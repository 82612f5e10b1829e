"""One tracked training run end to end: MLflow params, metrics, artifacts, failure states."""

from __future__ import annotations

import json
import logging
import resource
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_one_line_error
from flower_exp.callbacks import EPOCH_METRICS
from flower_exp.config import load_experiment
from flower_exp.errors import NonFiniteLoss
from flower_exp.tracking import TAG_ERROR, TAG_STATE, Tracker, TrackingTarget
from flower_exp.train import Pruned, run
from projects import TINY as PROJECT_TINY

# The shared tiny CNN project, trained for two epochs at a fixed peak LR.
TINY = {**PROJECT_TINY, "epochs": 2, "lr_max": 3e-3}


@pytest.fixture
def project(tmp_path, demo_root):
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY}}}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.fixture
def tracker(project):
    target = TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts"))
    (project / "mlruns").mkdir(exist_ok=True)
    return Tracker(target, "tiny")


def artifacts(tracker, run_id) -> set[str]:
    found, stack = set(), [None]
    while stack:
        for item in tracker.client.list_artifacts(run_id, stack.pop()):
            (stack.append(item.path) if item.is_dir else found.add(item.path))
    return found


def test_cnn_run_logs_everything_and_model_reproduces_val_probs(project, tracker):
    # A project in a git checkout: the run carries MLflow's standard source tags.
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "experiments.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    exp = load_experiment(config=project)
    result = run(exp, tracker=tracker, progress=None)
    assert result.state == "finished" and result.epochs_run == 2
    data = tracker.client.get_run(result.run_id).data
    assert data.tags["mlflow.source.git.commit"] == head and data.tags["mlflow.source.git.dirty"] == "false"
    assert data.tags["mlflow.source.name"] == "flower-exp"
    # The data it read is an MLflow dataset input: the fingerprint the params carry, split counts.
    (logged,) = tracker.client.get_run(result.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == data.params["data_fingerprint"]
    assert logged.dataset.name == Path(exp.data_dir).name
    assert json.loads(logged.dataset.profile) == {
        "train": int(data.params["train_images"]),
        "val": int(data.params["val_images"]),
        "classes": 4,
        "image_size": 32,
        "extra_sources": 0,
    }
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "training")]
    assert tracker.client.get_run(result.run_id).info.status == "FINISHED"
    assert data.tags[TAG_STATE] == "finished"
    for key in (
        "architecture",
        "image_size",
        "batch_size_per_replica",
        "lr_max",
        "lr_min",
        "epochs",
        "weights",
        "seed",
        "augment.flip",
        "data_fingerprint",
        "version.keras",
        "global_batch_size",
        "replicas",
    ):
        assert key in data.params, key
    assert data.params["architecture"] == "cnn" and data.params["image_size"] == "32"
    for key in EPOCH_METRICS:
        history = tracker.client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    assert [m.value for m in tracker.client.get_metric_history(result.run_id, "lr")] == pytest.approx([3e-3, 3e-3])
    for key in ("best_val_macro_f1", "best_epoch", "first_epoch_time_s", "mean_epoch_time_s", "peak_memory_mb"):
        assert key in data.metrics, key
    assert 0.0 <= data.metrics["best_val_macro_f1"] <= 1.0
    assert data.metrics["best_val_macro_f1"] == pytest.approx(result.best_val_macro_f1)
    assert data.metrics["peak_memory_mb"] > 10
    assert {
        "model/model.keras",
        "val_probs.npz",
        "confusion_matrix.png",
        "history.csv",
        "lr_schedule.png",
        "config.yaml",
    } <= artifacts(tracker, result.run_id)

    local = Path(tracker.client.download_artifacts(result.run_id, "", str(project / "dl")))
    stored = np.load(local / "val_probs.npz")
    assert stored["probs"].shape == (len(stored["ids"]), 4)
    np.testing.assert_allclose(stored["probs"].sum(axis=1), 1.0, rtol=1e-4)
    # The streaming val_macro_f1 of the best epoch is the exact macro-F1 of its probabilities.
    from flower_exp.ensemble import macro_f1

    assert result.best_val_macro_f1 == pytest.approx(macro_f1(stored["probs"], stored["labels"], 4), abs=1e-6)
    # The saved model is the best epoch's: it reproduces the logged probabilities.
    from flower_exp.data.pipeline import make_dataset
    from flower_exp.models import load_model

    model = load_model(str(local / "model" / "model.keras"))
    val = make_dataset(exp.data_dir, "val", image_size=32, batch_size=16, normalization="unit", with_ids=True)
    probs = model.predict(val.map(lambda x, y, i: x), verbose=0)
    np.testing.assert_allclose(probs, stored["probs"], atol=1e-4)
    ids = np.concatenate([i for _, _, i in val.as_numpy_iterator()]).astype(str)
    assert list(ids) == list(stored["ids"])
    assert (local / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert yaml.safe_load((local / "config.yaml").read_text())["architecture"] == "cnn"


def test_pruned_and_interrupted_runs_are_marked(project, tracker):
    exp = load_experiment(config=project, overrides=["epochs=3"])

    def prune(epoch, value):
        raise Pruned(epoch, value)

    result = run(exp, tracker=tracker, pruning_hook=prune, progress=None)
    assert result.state == "pruned" and result.epochs_run == 1
    data = tracker.client.get_run(result.run_id).data
    assert data.tags[TAG_STATE] == "pruned" and data.metrics["pruned_at_epoch"] == 1

    def interrupt(epoch, value):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(exp, tracker=tracker, pruning_hook=interrupt, progress=None)
    killed = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'KILLED'")
    assert len(killed) == 1 and killed[0].data.tags[TAG_STATE] == "killed"


def test_nan_loss_fails_the_run_without_a_model(project, tracker):
    exp = load_experiment(config=project, overrides=["lr_max=1e30", "lr_min=1e30", "epochs=2"])
    with pytest.raises(NonFiniteLoss, match="lower lr_max"):
        run(exp, tracker=tracker, progress=None)
    failed = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1
    assert "NonFiniteLoss" in failed[0].data.tags[TAG_ERROR]
    assert not any(p.startswith("model") for p in artifacts(tracker, failed[0].info.run_id))


def test_cli_train_keras_application_and_runs_table(cli, project):
    result = cli("train", "--set", "architecture=efficientnet_b0", "--set", "epochs=1", cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best val_macro_f1" in result.stdout
    assert "epoch 1/1" in result.stderr
    assert (project / "mlruns" / "mlflow.db").is_file()
    table = cli("runs", cwd=project)
    assert table.returncode == 0, table.stderr
    assert "efficientnet_b0" in table.stdout and "finished" in table.stdout


def test_cli_train_user_errors(cli, project):
    assert_one_line_error(
        cli("train", "--set", "architecture=resnet", cwd=project), "unknown architecture 'resnet'; allowed: cnn"
    )
    assert_one_line_error(cli("train", "--set", "image_size=1000", cwd=project), "no shards at 1000x1000 or larger")


def test_two_replica_mirrored_strategy_on_cpu(cli, project):
    result = cli("train", "--cpu-replicas", "2", "--strategy", "mirrored", "--set", "epochs=1", cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy over 2 CPUs" in result.stderr
    assert "global batch 32" in result.stderr


@pytest.mark.slow
def test_memory_is_bounded_over_many_runs(project, tracker):
    exp = load_experiment(config=project, overrides=["epochs=1"])
    rss = []
    for _ in range(10):
        run(exp, tracker=tracker, progress=None)
        rss.append(_rss_mb())
    # After warm-up, ten runs must not keep growing the process (a leak grows linearly).
    growth = rss[-1] - rss[2]
    assert growth < 0.25 * rss[2], rss


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_retracing_warning_dropped_only_for_keras_step_functions():
    import tensorflow as tf

    from flower_exp.train import _quiet_keras_retracing

    _quiet_keras_retracing()
    _quiet_keras_retracing()  # idempotent
    logger = logging.getLogger("tensorflow")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        tf.get_logger().warning(
            "5 out of the last 13 calls to <function TensorFlowTrainer.make_predict_function."
            "<locals>.one_step_on_data_distributed at 0x1> triggered tf.function retracing."
        )
        tf.get_logger().warning("5 out of the last 5 calls to <function my_step at 0x2> triggered tf.function retracing.")
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 1 and "my_step" in seen[0]
    assert sum(type(f).__name__ == "_KerasRetracingFilter" for f in logger.filters) == 1
