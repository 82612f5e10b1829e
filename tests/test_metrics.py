"""The streaming macro-F1 metric equals the host computation over all predictions at once."""

from __future__ import annotations

import numpy as np
import pytest

from flower_exp.ensemble import macro_f1


@pytest.mark.parametrize("classes, rows, batch", [(5, 203, 32), (104, 300, 64), (3, 7, 7)])
def test_streaming_macro_f1_matches_all_at_once(classes, rows, batch):
    from flower_exp.metrics import MacroF1

    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, rows)
    # Skewed probabilities: some classes are never predicted, some never true (zero_division=0).
    probs = rng.dirichlet(np.full(classes, 0.3), rows).astype(np.float32)
    probs[labels == 0] = np.eye(classes, dtype=np.float32)[1]
    metric = MacroF1(classes)
    for start in range(0, rows, batch):
        metric.update_state(labels[start : start + batch, None], probs[start : start + batch])
    assert float(metric.result()) == pytest.approx(macro_f1(probs, labels, classes), abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_streaming_macro_f1_compiles_and_survives_a_save(tmp_path):
    import keras

    from flower_exp.metrics import MacroF1
    from flower_exp.models import load_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(loss="sparse_categorical_crossentropy", metrics=[MacroF1(3)], jit_compile=True)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    y = np.arange(50) % 3
    logs = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert logs["macro_f1"] == pytest.approx(macro_f1(model.predict(x, verbose=0), y, 3), abs=1e-6)
    model.save(tmp_path / "m.keras")
    reloaded = load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
