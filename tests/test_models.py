"""Model registry: names, heads, weights handling, safe reload in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from flower_exp import models
from flower_exp.errors import FlowerExpError
from flower_exp.strategy import precision_policy


def test_registry_names_and_unknown():
    names = models.list_models()
    for name in [
        "cnn",
        "densenet121",
        "densenet169",
        "densenet201",
        "efficientnet_b0",
        "efficientnet_b7",
        "efficientnet_ns_b0",
        "efficientnet_ns_b7",
    ]:
        assert name in names
    with pytest.raises(FlowerExpError, match=r"architecture 'resnet': unknown; allowed: cnn, densenet121"):
        models.create_model("resnet", num_classes=3, image_size=32)
    assert models.normalization_for("efficientnet_b3") == "raw"
    assert models.normalization_for("densenet201") == "torch"
    assert models.normalization_for("efficientnet_ns_b7") == "torch"
    assert models.normalization_for("cnn") == "unit"


def test_cnn_head_is_float32_softmax_under_mixed_precision():
    with precision_policy("bfloat16"):
        model = models.create_model("cnn", num_classes=5, image_size=32, cnn_width=8, cnn_depth=2)
    assert model.output.dtype == "float32"
    probs = model.predict(np.random.rand(2, 32, 32, 3).astype("float32"), verbose=0)
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-3)
    assert all(layer.trainable for layer in model.layers)
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_weights_errors():
    with pytest.raises(FlowerExpError, match="weights 'noisy-student': not available for densenet121"):
        models.create_model("densenet121", num_classes=3, image_size=32, weights="noisy-student")
    with pytest.raises(FlowerExpError, match="no such file"):
        models.create_model("densenet121", num_classes=3, image_size=32, weights="/nope/x.h5")
    with pytest.raises(FlowerExpError, match="cnn_width and cnn_depth must be >= 1"):
        models.create_model("cnn", num_classes=3, image_size=32, cnn_width=0)


@pytest.mark.parametrize(
    "name,weights",
    [
        ("densenet121", "imagenet"),
        ("efficientnet_b0", "imagenet"),
        ("efficientnet_ns_b0", "imagenet"),
        ("efficientnet_ns_b0", "noisy-student"),
    ],
)
def test_offline_pretrained_weights_fail_with_one_line(monkeypatch, tmp_path, name, weights):
    from urllib.error import URLError

    from keras.src.utils import file_utils

    fetched = []

    def no_network(url, target, *args, **kwargs):
        fetched.append((url, os.path.basename(target)))
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv(models.WEIGHTS_ENV, raising=False)
    with pytest.raises(FlowerExpError) as info:
        models.create_model(name, num_classes=3, image_size=32, weights=weights)
    message = str(info.value)
    assert "\n" not in message
    assert f"could not download {weights} weights for {name}" in message
    # The registry's file and URL (what `flower-exp weights` lists without TensorFlow) are the
    # ones the installed keras.applications / efficientnet package download.
    file, url = models.weights_file(models.get_spec(name), weights)
    assert fetched == [(url, file)]
    assert (
        f"put {file} in one of weights_dir (not set), $FLOWER_EXP_WEIGHTS (not set), Keras cache "
        f"({tmp_path / 'models'}) or set weights: /path/to/{file}"
    ) in message


def test_weights_are_looked_up_in_order_and_used_without_download(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def no_download(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(file_utils, "urlretrieve", no_download)
    spec = models.get_spec("densenet121")
    file, _url = models.weights_file(spec, "imagenet")
    folders = {label: tmp_path / label for label in ("dir", "env", "keras")}
    monkeypatch.setenv(models.WEIGHTS_ENV, str(folders["env"]))
    monkeypatch.setenv("KERAS_HOME", str(folders["keras"]))
    assert models.find_weights_file(spec, "imagenet", str(folders["dir"])) is None
    assert models.resolve_weights("densenet121", "pretrained", str(folders["dir"])) == "imagenet"  # left to download
    for label, folder in reversed(folders.items()):  # each found over the ones after it
        target = folder / "models" / file if label == "keras" else folder / file
        target.parent.mkdir(parents=True)
        target.write_bytes(b"")
        found = models.find_weights_file(spec, "imagenet", str(folders["dir"]))
        assert found == ({"dir": "weights_dir", "env": "$FLOWER_EXP_WEIGHTS", "keras": "Keras cache"}[label], str(target))
    assert models.resolve_weights("densenet121", "pretrained", str(folders["dir"])) == str(folders["dir"] / file)
    # A file that is not the network's weights fails naming it, and nothing is downloaded.
    with pytest.raises(FlowerExpError, match=f"weights {folders['dir'] / file}: cannot load into densenet121"):
        models.create_model("densenet121", num_classes=3, image_size=32, weights="imagenet", weights_dir=str(folders["dir"]))


def test_local_weights_file_loads(tmp_path):
    import keras

    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "densenet121_notop.weights.h5"
    base.save_weights(str(path))
    model = models.create_model("densenet121", num_classes=3, image_size=32, weights=str(path))
    loaded = model.get_layer("densenet121").get_weights()
    for a, b in zip(base.get_weights(), loaded):
        np.testing.assert_array_equal(a, b)
    other = tmp_path / "cnn.weights.h5"
    models.create_model("cnn", num_classes=3, image_size=32, cnn_width=4, cnn_depth=1).get_layer("cnn_base").save_weights(
        str(other)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FlowerExpError) as exc:
            models.create_model("densenet121", num_classes=3, image_size=32, weights=str(other))
    message = str(exc.value)
    assert message.startswith(f"weights {other}: cannot load into densenet121 (") and "\n" not in message
    assert "conv1_conv/kernel is (7, 7, 3, 64) in the model but" in message and "headless densenet121" in message
    # Keras' per-layer "Skipping ..." warnings would bury the one-line error.
    assert not [w for w in caught if "Skipping" in str(w.message)]


def test_efficientnet_package_model_reloads_in_fresh_process(tmp_path):
    model = models.create_model("efficientnet_ns_b0", num_classes=4, image_size=32)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(
        f"""
        import numpy as np
        from flower_exp.models import load_model
        m = load_model({str(path)!r})
        np.save({str(tmp_path / "y.npy")!r}, m.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-6)


def test_load_model_refuses_lambda_layers(tmp_path):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(FlowerExpError, match="cannot load model safely"):
        models.load_model(str(path))
