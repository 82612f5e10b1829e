"""Transfer learning: the head trained on a frozen backbone, then the backbone's top layers
fine-tuned, in one tracked run; and the settings' user errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import assert_one_line_error
from flower_exp.callbacks import EPOCH_METRICS
from flower_exp.config import load_experiment, load_sweep
from flower_exp.errors import ConfigError
from flower_exp.tracking import Tracker, TrackingTarget
from flower_exp.train import Phase, phases, refit, run
from projects import TINY as PROJECT_TINY

# The shared tiny CNN project, trained for two epochs at a fixed peak LR.
TINY = {**PROJECT_TINY, "epochs": 2, "lr_max": 3e-3}
# A small pretrained network, its "imagenet" weights a file the test writes into weights_dir:
# two epochs of the head alone, then one that fine-tunes the backbone's top 30 layers.
TRANSFER = [
    "architecture=efficientnet_b0",
    "weights=imagenet",
    "weights_dir=weights",
    "epochs=3",
    "freeze_backbone_epochs=2",
    "fine_tune_layers=30",
    "lr_rampup_epochs=0",
    "lr_sustain_epochs=3",
    "lr_max=1e-3",
]


@pytest.fixture
def project(tmp_path, demo_root):
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": demo_root, **TINY}}}
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "sweeps").mkdir()
    return tmp_path


@pytest.fixture
def tracker(project):
    (project / "mlruns").mkdir(exist_ok=True)
    return Tracker(TrackingTarget(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", str(project / "mlruns" / "artifacts")), "tiny")


def _snapshot_callback():
    """A Keras callback keeping the backbone's variables (by path) before training and after each epoch."""
    import keras

    from flower_exp.models import backbone

    class Snapshots(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.initial: dict[str, np.ndarray] | None = None
            self.epochs: list[dict[str, np.ndarray]] = []

        def _take(self):
            return {v.path: v.numpy() for v in backbone(self.model).weights}

        def on_train_begin(self, logs=None):
            if self.initial is None:
                self.initial = self._take()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(self._take())

    return Snapshots()


def write_weights_file(path, build) -> list[np.ndarray]:
    """Save the headless network ``build()`` makes (its own random initialisation) in the legacy
    HDF5 format of the published ``..._notop.h5`` files; returns its weights."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(123)  # not the run's seed: a run that ignored the file would start elsewhere
    base = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return [v.numpy() for v in base.weights]


def test_frozen_head_then_fine_tuned_top_layers_in_one_run(project, tracker, monkeypatch):
    import keras
    from keras.src.utils import file_utils

    from flower_exp.models import backbone, create_model

    file = project / "weights" / "efficientnetb0_notop.h5"
    published = write_weights_file(
        file, lambda: keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    )

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(file_utils, "urlretrieve", no_download)
    exp = load_experiment(config=project, overrides=TRANSFER)
    snapshots = _snapshot_callback()
    result = run(exp, tracker=tracker, progress=None, callbacks=[snapshots])
    assert result.state == "finished" and result.epochs_run == 3
    # Training started from the file's weights, found in weights_dir.
    for started, saved in zip(snapshots.initial.values(), published, strict=True):
        np.testing.assert_array_equal(started, saved)

    # Which variables the fine-tuning phase may change: those of the top 30 layers, except
    # BatchNormalization's (kept frozen, in inference mode).
    network = create_model("efficientnet_b0", num_classes=4, image_size=32)
    layers = backbone(network).layers
    top = {layer.name for layer in layers[-30:] if type(layer).__name__ != "BatchNormalization"}
    batchnorm = {layer.name for layer in layers if type(layer).__name__ == "BatchNormalization"}

    def layer_of(path: str) -> str:
        return path.split("/")[-2]

    initial, after = snapshots.initial, snapshots.epochs
    assert len(after) == 3
    for epoch in (0, 1):  # frozen: nothing in the backbone moves, BN moving statistics included
        for path, value in initial.items():
            np.testing.assert_array_equal(after[epoch][path], value, err_msg=f"{path} changed in frozen epoch {epoch + 1}")
    changed = {path for path, value in initial.items() if not np.array_equal(after[2][path], value)}
    assert changed, "the fine-tuning epoch changed nothing"
    assert {layer_of(p) for p in changed} <= top, sorted(changed)[:5]
    assert not {p for p in changed if layer_of(p) in batchnorm}
    assert any(p.endswith("moving_mean") and layer_of(p) in batchnorm for p in initial)  # the check above saw them

    # One run with continuous epochs: every per-epoch metric at steps 1..3, the trainable
    # parameter count rising at the phase boundary, the schedule unbroken.
    client = tracker.client
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2, 3], key
    trainable = [m.value for m in client.get_metric_history(result.run_id, "trainable_params")]
    assert trainable[0] == trainable[1] == 1280 * 4 + 4  # the head alone: 1280 features -> 4 classes
    assert trainable[2] > trainable[1]
    assert [m.value for m in client.get_metric_history(result.run_id, "lr")] == pytest.approx([1e-3] * 3)
    params = client.get_run(result.run_id).data.params
    assert params["freeze_backbone_epochs"] == "2" and params["fine_tune_layers"] == "30"
    assert params["phases"] == (
        f"epochs 1-2: head only, backbone frozen; epochs 3-3: head and top 30 of {len(layers)} "
        "backbone layers (BatchNormalization frozen)"
    )
    assert params["weights_file"] == str(file)

    # A refit follows the same phases (here over 2 epochs with one frozen).
    one_frozen = load_experiment(config=project, overrides=[*TRANSFER, "freeze_backbone_epochs=1"])
    refit_id = refit(one_frozen, 2, tracker=tracker, refit_of=result.run_id, progress=None)
    assert client.get_run(refit_id).data.params["phases"].startswith("epochs 1-1: head only, backbone frozen; epochs 2-2: head")
    refit_trainable = [m.value for m in client.get_metric_history(refit_id, "trainable_params")]
    assert refit_trainable[0] == trainable[0] and refit_trainable[1] == trainable[2]


def test_phases():
    exp = load_experiment("demo")
    cfg = exp.config

    def plan(epochs=6, trained_head=False, **settings):
        return phases(cfg.model_copy(update=settings), epochs, trained_head)

    assert plan() == [Phase(0, 6, None)]  # no transfer settings: the whole network, as before
    assert plan(freeze_backbone_epochs=2) == [Phase(0, 2, 0), Phase(2, 6, "all")]
    assert plan(freeze_backbone_epochs=2, fine_tune_layers=20) == [Phase(0, 2, 0), Phase(2, 6, 20)]
    assert plan(fine_tune_layers=20) == [Phase(0, 6, 20)]
    assert plan(freeze_backbone_epochs=9) == [Phase(0, 6, 0)]  # refits with fewer epochs stop early
    assert plan(freeze_backbone_epochs=2, fine_tune_layers=0) == [Phase(0, 6, 0)]
    # Started from trained weights (a sweep's continuation): the head is trained, no frozen phase.
    assert plan(freeze_backbone_epochs=2, fine_tune_layers=20, trained_head=True) == [Phase(0, 6, 20)]


# --------------------------------------------------------------------------- user errors: exit 2, one line


def test_backbone_settings_on_cnn_are_refused(cli, project):
    assert_one_line_error(
        cli("train", "--set", "freeze_backbone_epochs=2", cwd=project),
        "experiments.yaml: experiments.tiny.freeze_backbone_epochs: 2 needs an architecture with a backbone and cnn "
        "has none; allowed with cnn: 0",
    )
    assert_one_line_error(
        cli("train", "--set", "fine_tune_layers=10", cwd=project),
        "experiments.tiny.fine_tune_layers: 10 needs an architecture",
        "allowed with cnn: all",
    )
    assert not (project / "mlruns" / "mlflow.db").exists()  # refused before any run exists


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("-1", "fine_tune_layers: Input should be a number of layers >= 0 or 'all' (got -1)"),
        ("most", "fine_tune_layers: Input should be a number of layers >= 0 or 'all' (got 'most')"),
        ("true", "fine_tune_layers: Input should be a number of layers >= 0 or 'all' (got True)"),
    ],
)
def test_bad_fine_tune_layers(cli, project, value, fragment):
    assert_one_line_error(cli("config", "show", "--set", f"fine_tune_layers={value}", cwd=project), "--set", fragment)


def test_bad_freeze_backbone_epochs(cli, project):
    assert_one_line_error(
        cli("config", "show", "--set", "freeze_backbone_epochs=-1", cwd=project),
        "freeze_backbone_epochs: Input should be greater than or equal to 0",
    )


BAD_SWEEPS = {
    "fixed_on_cnn": (
        {"params": {"lr_max": {"low": 1e-3, "high": 2e-3}}, "fixed": {"freeze_backbone_epochs": 2}},
        "fixed.freeze_backbone_epochs: 2 needs an architecture with a backbone and cnn has none",
    ),
    "searched_with_cnn": (
        {"params": {"architecture": {"choices": ["cnn", "efficientnet_b0"]}, "fine_tune_layers": {"choices": [20, "all"]}}},
        "params.fine_tune_layers: 20 needs an architecture with a backbone and cnn has none; allowed with "
        "cnn: all (with a backbone: densenet*, efficientnet*); or sample it only with those: when:",
    ),
    "enqueued_with_cnn": (
        {
            "params": {
                "architecture": {"choices": ["cnn", "efficientnet_b0"]},
                "freeze_backbone_epochs": {"low": 0, "high": 2, "when": {"architecture": ["efficientnet_b0"]}},
            },
            "enqueue": [{"architecture": "cnn", "freeze_backbone_epochs": 1}],
        },
        "enqueue.0.freeze_backbone_epochs: 1 needs an architecture with a backbone",
    ),
    "wrong_type": (
        {"params": {"fine_tune_layers": {"choices": ["20"]}}, "fixed": {"architecture": "densenet121"}},
        "params.fine_tune_layers: '20' has the wrong type for 'fine_tune_layers'; allowed: a number of layers >= 0 or 'all'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_transfer_sweeps_exit_2_with_one_line(cli, project, case):
    sweep, fragment = BAD_SWEEPS[case]
    (project / "sweeps" / "bad.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    assert_one_line_error(cli("sweep", "-s", "bad", cwd=project), "bad.yaml", fragment)


def test_transfer_sweeps_that_keep_cnn_apart_are_accepted(project):
    exp = load_experiment(config=project).config  # architecture cnn
    ok = [
        # The architecture fixed beside the settings, on a cnn experiment.
        {
            "params": {"freeze_backbone_epochs": {"low": 0, "high": 3}, "fine_tune_layers": {"choices": [20, "all"]}},
            "fixed": {"architecture": "efficientnet_b0"},
        },
        # cnn searched too, the settings sampled only with a backbone; a trial enqueued for each.
        {
            "params": {
                "architecture": {"choices": ["cnn", "efficientnet_b0"]},
                "freeze_backbone_epochs": {"low": 1, "high": 3, "when": {"architecture": ["efficientnet_b0"]}},
            },
            "enqueue": [{"architecture": "efficientnet_b0", "freeze_backbone_epochs": 2}, {"architecture": "cnn"}],
        },
        # Fixed settings with architectures that all have a backbone (sweep --set lands in fixed).
        {
            "params": {"architecture": {"choices": ["densenet121", "efficientnet_b0"]}},
            "fixed": {"freeze_backbone_epochs": 2, "fine_tune_layers": 40},
        },
    ]
    for i, sweep in enumerate(ok):
        path = project / "sweeps" / f"ok{i}.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        load_sweep(path, exp)
    # sweep --set architecture=cnn on the first one.
    with pytest.raises(ConfigError, match="params.freeze_backbone_epochs: 3 needs"):
        load_sweep(project / "sweeps" / "ok0.yaml", exp, fixed={"architecture": "cnn"})
