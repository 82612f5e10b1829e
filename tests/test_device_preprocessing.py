"""Augmentation and normalisation inside the training step (``augment.runs_on: device``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from flower_exp.config import AugmentConfig, load_experiment
from flower_exp.tracking import Tracker, TrackingTarget

tf = pytest.importorskip("tensorflow")


def test_layer_normalises_always_and_augments_only_in_training():
    import keras

    from flower_exp.data.pipeline import normalize
    from flower_exp.device_preprocessing import DevicePreprocessing

    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3)), tf.uint8)
    layer = DevicePreprocessing(AugmentConfig(), "tf", seed=1)
    np.testing.assert_allclose(layer(images, training=False).numpy(), normalize(images, "tf").numpy(), atol=1e-6)
    first, second = layer(images, training=True).numpy(), layer(images, training=True).numpy()
    assert first.dtype == np.float32 and first.shape == (4, 24, 24, 3)
    assert first.min() >= -1.0 - 1e-6 and first.max() <= 1.0 + 1e-6
    assert not np.allclose(first, normalize(images, "tf").numpy(), atol=1e-2)
    assert not np.allclose(first, second)  # a fresh draw every batch
    off = DevicePreprocessing(AugmentConfig(enabled=False), "unit")
    np.testing.assert_allclose(off(images, training=True).numpy(), images.numpy() / 255.0, atol=1e-6)
    # The whole stage compiles with XLA (TPU training steps are always compiled).
    compiled = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    assert compiled(images).shape == (4, 24, 24, 3)
    assert isinstance(keras.ops.convert_to_tensor(compiled(images)), tf.Tensor)


@pytest.fixture
def project(tmp_path, demo_root):
    exp = {
        "data_dir": demo_root,
        "image_size": 32,
        "batch_size_per_replica": 16,
        "shuffle_buffer": 64,
        "epochs": 2,
        "architecture": "cnn",
        "cnn_width": 8,
        "cnn_depth": 2,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 1,
        "lr_max": 3e-3,
        "augment": {"runs_on": "device"},
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"default": "tiny", "experiments": {"tiny": exp}}))
    (tmp_path / "mlruns").mkdir()
    return tmp_path


def test_run_with_device_preprocessing_saves_the_plain_network(project):
    from flower_exp.data.pipeline import make_dataset
    from flower_exp.ensemble import macro_f1
    from flower_exp.models import load_model
    from flower_exp.train import run

    tracker = Tracker(
        TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny"
    )
    result = run(load_experiment(config=project), tracker=tracker, progress=None)
    assert result.state == "finished"
    params = tracker.client.get_run(result.run_id).data.params
    assert params["preprocessing_on"] == "device" and params["normalization"] == "unit"
    local = Path(tracker.client.download_artifacts(result.run_id, "", str(project / "dl")))
    stored = np.load(local / "val_probs.npz")
    assert result.best_val_macro_f1 == pytest.approx(macro_f1(stored["probs"], stored["labels"], 4), abs=1e-6)
    # The saved model is the network alone: normalised float input, as export and predict feed it.
    model = load_model(str(local / "model" / "model.keras"))
    assert model.input_shape == (None, 32, 32, 3) and "device_preprocessing" not in [layer.name for layer in model.layers]
    val = make_dataset(
        str(Path(load_experiment(config=project).data_dir)), "val", image_size=32, batch_size=16, normalization="unit"
    )
    np.testing.assert_allclose(model.predict(val.map(lambda x, y: x), verbose=0), stored["probs"], atol=1e-4)


def test_runs_on_is_validated(project):
    from flower_exp.errors import FlowerExpError

    with pytest.raises(FlowerExpError, match="runs_on"):
        load_experiment(config=project, overrides=["augment.runs_on=gpu"])
