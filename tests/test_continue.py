"""Continuing trained models: ``train.run(init_weights=...)`` starts from a saved model's weights,
and a budgeted sweep with ``continue_best`` spends the end of its budget training its best
trials on instead of starting new ones."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from flower_exp.callbacks import callback_base
from flower_exp.config import HeartbeatConfig, load_experiment
from flower_exp.errors import FlowerExpError
from flower_exp.study import SweepOptions, open_storage, run_sweep
from flower_exp.study.names import ATTR_CONTINUES, ATTR_RUN
from flower_exp.study.scoring import scored
from flower_exp.tracking import Tracker, TrackingTarget

# ``import flower_exp.train as m`` would give the public function (see flower_exp/__init__.py).
train_module = importlib.import_module("flower_exp.train")

TINY = {
    "image_size": 32,
    "batch_size_per_replica": 16,
    "shuffle_buffer": 64,
    "cnn_width": 4,
    "cnn_depth": 2,
    "lr_rampup_epochs": 0,
    "lr_sustain_epochs": 1,
    "early_stopping_patience": 0,
}


@pytest.fixture
def project(tmp_path, demo_root):
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY}}}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _tracker(project: Path) -> Tracker:
    return Tracker(TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny")


def _model_file(tracker: Tracker, run_id: str, folder: Path) -> str:
    return tracker.download(run_id, "model/model.keras", str(folder))


class _FirstWeights(callback_base()):
    """The network's weights when training begins."""

    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


def test_a_run_starts_from_the_weights_it_is_given_and_refuses_another_network(project, tmp_path):
    import keras

    tracker = _tracker(project)
    exp = load_experiment("tiny", project / "experiments.yaml", ["epochs=2"])
    source = train_module.run(exp, tracker=tracker, progress=None)
    saved = _model_file(tracker, source.run_id, tmp_path / "source")

    first = _FirstWeights()
    train_module.run(exp, tracker=tracker, progress=None, callbacks=[first], init_weights=saved)
    expected = keras.saving.load_model(saved, compile=False, safe_mode=True).get_weights()
    assert len(first.weights) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, expected))

    fresh = _FirstWeights()
    train_module.run(exp, tracker=tracker, progress=None, callbacks=[fresh])
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.weights, expected))

    wider = load_experiment("tiny", project / "experiments.yaml", ["epochs=1", "cnn_width=8"])
    with pytest.raises(FlowerExpError, match="cannot start from these weights"):
        train_module.run(wider, tracker=tracker, progress=None, init_weights=saved)


def test_budgeted_sweep_continues_its_best_trials_at_the_end(project):
    import optuna

    sweep = {
        "trials": 100,
        "sampler": {"name": "random", "seed": 2},
        "pruner": {"name": "none"},
        "params": {"lr_max": {"low": 1.0e-3, "high": 4.0e-3, "log": True}},
        "fixed": {"epochs": 3},
        "continue_best": {"budget_fraction": 0.6, "lr_scale": 0.5},
    }
    (project / "sweeps").mkdir()
    (project / "sweeps" / "cont.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    lines = []
    result = run_sweep(
        SweepOptions(sweep="cont", config=project / "experiments.yaml", budget_min=0.5, quiet=True), log=lines.append
    )
    assert result.counts["running"] == 0 and result.counts["waiting"] == 0

    study = optuna.load_study(study_name=result.study_name, storage=open_storage(result.storage_url, HeartbeatConfig()))
    trials = study.get_trials(deepcopy=False)
    continued = [t for t in trials if ATTR_CONTINUES in t.user_attrs]
    fresh = [t for t in trials if ATTR_CONTINUES not in t.user_attrs]
    assert fresh and continued, lines
    # Exploration first, then only continuations: none of them starts a new configuration.
    assert max(t.number for t in fresh) < min(t.number for t in continued)
    first = continued[0]
    source = trials[first.user_attrs[ATTR_CONTINUES]]
    # The best model when the continuation started.
    assert source.number == scored([t for t in trials if t.number < first.number])[0][1].number
    assert first.params == source.params
    # No source is continued twice.
    sources = [t.user_attrs[ATTR_CONTINUES] for t in continued]
    assert len(sources) == len(set(sources))

    run = _tracker(project).client.get_run(first.user_attrs[ATTR_RUN])
    assert run.data.tags["flower_exp.continues_trial"] == str(source.number)
    assert run.data.tags["flower_exp.continued_from_run"] == source.user_attrs[ATTR_RUN]
    source_run = _tracker(project).client.get_run(source.user_attrs[ATTR_RUN])
    assert float(run.data.params["lr_max"]) == pytest.approx(0.5 * float(source_run.data.params["lr_max"]))
    assert any(f"trial {first.number}: continues trial {source.number}" in line for line in lines), lines
