"""One tracked training run, read top to bottom: setup → data → model → train → evaluate → log.

:func:`run` trains one configuration and records it in MLflow (params, per-epoch metrics,
summary metrics, artifacts); the sweep calls it once per trial with a pruning hook. With the
transfer-learning settings, training is :func:`phases`: one ``fit`` call per phase on the same
model, recompiled in between, its epochs counted on across them.
"""

from __future__ import annotations

import csv
import gc
import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .budget import Deadline
from .config import ExperimentConfig, ResolvedExperiment, check_backbone_settings, project_dir
from .ensemble import confusion_png
from .errors import NonFiniteLoss, RecordingFailed
from .memory_estimate import check_memory, out_of_memory
from .schedule import LRSchedule, plot_schedule
from .tracking import (
    TAG_KIND,
    TAG_PREFIX,
    TAG_STATE,
    DatasetRecord,
    Tracker,
    default_target,
    git_commit,
    package_versions,
    source_tags,
)

EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "epoch_time_s",
    "images_per_s",
    "trainable_params",
)
# Settings that are not hyperparameters of the run (logged elsewhere or meaningless as params).
_NOT_PARAMS = {"name", "description", "classes", "classes_file", "generate", "extra_data", "data_dir", "cache_dir", "memory_check",
               "weights_dir"}
# How much longer than a frozen-backbone epoch the first fine-tuning epoch may take: a frozen
# epoch runs only the backbone's forward pass, and backpropagating through it costs about twice that.
_FINE_TUNE_COST = 3.0


# Not in errors.py: control flow between the sweep's pruning hook and this module, never shown
# to the user (run() catches it and returns state "pruned"; the sweep raises Optuna's own).
class Pruned(Exception):
    """Raised by a pruning hook to stop a run early (the sweep maps it to Optuna's)."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned at epoch {epoch} (val_macro_f1 {value:.4f})")
        self.epoch = epoch
        self.value = value


PruningHook = Callable[[int, float], None]


@dataclass
class RunResult:
    """What one run produced."""

    run_id: str | None
    state: str  # finished | pruned | stopped (by the budget's deadline)
    best_val_macro_f1: float
    best_epoch: int  # 1-based
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    val_ids: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_probs: np.ndarray | None = None
    # Seconds from the end of training to the end of the run (scoring, artifacts, MLflow):
    # the reserve a budgeted sweep keeps for the next run.
    finish_s: float | None = None


@dataclass(frozen=True)
class Phase:
    """Epochs ``start`` to ``end`` (0-based, ``end`` excluded) trained by one ``fit`` call, and
    what trains beside the head: the backbone's top ``layers`` layers (0: none; ``"all"``), its
    BatchNormalization layers frozen; None: the whole network as built (no transfer settings)."""

    start: int
    end: int
    layers: int | str | None


def phases(cfg: ExperimentConfig, epochs: int, trained_head: bool = False) -> list[Phase]:
    """How ``epochs`` epochs of ``cfg`` train: ``freeze_backbone_epochs`` epochs of the head
    alone, then the rest with the backbone's top ``fine_tune_layers`` layers too; one phase
    where both would train the same layers. ``trained_head`` (a run started from trained
    weights) drops the frozen phase: it exists to keep a random head's large first gradients
    out of the pretrained backbone, and this head is trained already."""
    tuned = cfg.fine_tune_layers
    if cfg.freeze_backbone_epochs == 0 and tuned == "all":
        return [Phase(0, epochs, None)]
    frozen = 0 if trained_head or tuned == 0 else min(cfg.freeze_backbone_epochs, epochs)
    plan = [Phase(0, frozen, 0)] if frozen else []
    if frozen < epochs:
        plan.append(Phase(frozen, epochs, tuned))
    return plan


def schedule_for(cfg: ExperimentConfig) -> LRSchedule:
    """The LR schedule of a configuration."""
    return LRSchedule(
        lr_min=cfg.lr_min,
        lr_max=cfg.lr_max,
        lr_start=cfg.lr_start,
        rampup_epochs=cfg.lr_rampup_epochs,
        sustain_epochs=cfg.lr_sustain_epochs,
        decay=cfg.lr_decay,
        scale_by_replicas=cfg.lr_scale_by_replicas,
        random_rampup=cfg.lr_random_rampup,
        seed=cfg.seed,
    )


def run(
    exp: ResolvedExperiment,
    *,
    tracker: Tracker | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    pruning_hook: PruningHook | None = None,
    allow_leakage: bool = False,
    progress: Callable[[str], None] | None = print,
    callbacks: list[Any] | None = None,
    on_run_start: Callable[[str], None] | None = None,
    deadline: Deadline | None = None,
    finish_reserve_s: float | None = None,
    init_weights: str | None = None,
) -> RunResult:
    """Train ``exp`` once and log it to MLflow (``tracker``, else the project's default store).

    The run ends FINISHED (``flower_exp.state`` finished, pruned, or stopped when ``deadline``
    left no time for another epoch plus ``finish_reserve_s`` of finishing work), FAILED with
    the error as a tag (e.g. a NaN loss), or KILLED on Ctrl-C; a failed run never logs a model.
    ``init_weights``: a saved ``.keras`` model of the same network to start from (weights only,
    no code is loaded) instead of a fresh initialisation.
    """
    from .data import pipeline
    from .data.dataset import open_data
    from .data.leakage import ensure_no_leakage

    cfg = exp.config
    check_backbone_settings(exp)
    say = progress or (lambda _m: None)
    # Data problems are the user's to fix: find them before a run exists to mark FAILED.
    data = open_data(exp, log=say)
    extra = [pipeline.DataSource(root, splits) for root, splits in data.extra]
    train_files = pipeline.split_files(data.root, "train", cfg.image_size, extra)
    val_files = pipeline.split_files(data.root, "val", cfg.image_size)
    if data.extra:
        ensure_no_leakage(
            data.root,
            size=cfg.image_size,
            extra=data.extra,
            max_distance=cfg.leakage.max_distance,
            cache_dir=exp.cache_dir,
            allow=allow_leakage,
        )
    # Refused before a run exists: an impossible configuration is not a failed training.
    check_memory(cfg, len(data.class_names), say)
    if tracker is None:
        tracker = Tracker(default_target(project_dir(Path(exp.config_path)), tracking_uri), cfg.name)
    name = run_name or f"{cfg.architecture}-{cfg.image_size}px"
    run_tags = {TAG_KIND: "train", TAG_PREFIX + "architecture": cfg.architecture,
                **source_tags(Path(exp.config_path).parent), **(tags or {})}
    with tracker.run(name, run_tags, parent_run_id) as run_id:
        if on_run_start is not None:
            on_run_start(run_id)
        plan = phases(cfg, cfg.epochs, trained_head=init_weights is not None)
        fine_tune_from = plan[1].start if len(plan) > 1 else None
        stop = _StopAtDeadline(deadline, finish_reserve_s, cfg.epochs, fine_tune_from) if deadline is not None else None
        with pipeline.shard_errors_named(train_files, val_files, num_classes=len(data.class_names)), _freeing_run_memory():
            result, fit_end = _train(exp, data, train_files, val_files, tracker, run_id, pruning_hook, say,
                                     [*(callbacks or []), *([stop] if stop else [])], stop, init_weights, plan)
    result.finish_s = time.time() - fit_end
    return result


def refit(
    exp: ResolvedExperiment,
    epochs: int,
    *,
    tracker: Tracker,
    refit_of: str,
    parent_run_id: str | None = None,
    progress: Callable[[str], None] | None = print,
) -> str:
    """Retrain ``exp``'s configuration on train+val for ``epochs`` epochs (its original run's
    best epoch count, as the seed trained its final models; in the same :func:`phases`) and log
    it as a new run linked to ``refit_of``. There is no validation left to score it on; returns
    the new run id."""
    from ._imports import tensorflow
    from .data import pipeline
    from .data.dataset import open_data

    tensorflow()
    import keras

    check_backbone_settings(exp)
    say = progress or (lambda _m: None)
    cfg = exp.config.model_copy(update={"epochs": epochs})
    exp = exp.model_copy(update={"config": cfg})
    data = open_data(exp, log=say)
    extra = [pipeline.DataSource(root, splits) for root, splits in data.extra]
    train_files = pipeline.split_files(data.root, "train+val", cfg.image_size, extra)
    tags = {TAG_KIND: "refit", TAG_PREFIX + "refit_of": refit_of, TAG_PREFIX + "architecture": cfg.architecture,
            **source_tags(Path(exp.config_path).parent)}
    named = pipeline.shard_errors_named(train_files, num_classes=len(data.class_names))
    with tracker.run(f"refit-{cfg.architecture}-{cfg.image_size}px", tags, parent_run_id) as run_id, named, _freeing_run_memory():
        acc, global_batch, schedule = _setup(cfg, say)
        steps = pipeline.steps_per_epoch(train_files.count, global_batch, acc.drop_remainder)
        prep = Preprocessing.choose(cfg, acc)
        train_ds = _training_data(data, "train+val", cfg, global_batch, acc, prep)
        params = _run_params(exp, data, train_files, acc, global_batch, steps, prep)
        tracker.log_params(run_id, {**params, "epochs": epochs, "refit_of": refit_of})
        tracker.log_dataset(run_id, _dataset(data, cfg, params["data_fingerprint"], "refit", **{"train+val": train_files.count}))
        model, network = _built_model(cfg, acc, len(data.class_names), prep, exp.weights_dir)
        plan = phases(cfg, epochs)
        tracker.log_params(run_id, {"phases": _describe_phases(plan, network)})
        timer = _EpochTimer(steps * global_batch)
        logger = _Logger(tracker, run_id, schedule, acc.replicas, epochs, say, None)
        callbacks = [timer, _StopOnNonFinite(), keras.callbacks.LearningRateScheduler(lambda e, _lr: schedule.lr(e, acc.replicas)), logger]
        _fit_phases(model, network, plan, train_ds, cfg=cfg, acc=acc, schedule=schedule, num_classes=len(data.class_names),
                    logger=logger, say=say, steps_per_epoch=steps, callbacks=callbacks)
        tracker.log_metrics(run_id, {"epochs_run": len(logger.history), "first_epoch_time_s": timer.times[0],
                                     "mean_epoch_time_s": float(np.mean(timer.times[1:])) if len(timer.times) > 1 else None})
        with tempfile.TemporaryDirectory(prefix="flower-exp-refit-") as tmp:
            folder = Path(tmp)
            (folder / "model").mkdir()
            network.save(folder / "model" / "model.keras")
            _write_history(folder / "history.csv", logger.history)
            plot_schedule(schedule, epochs, str(folder / "lr_schedule.png"), acc.replicas)
            _write_config(folder / "config.yaml", exp, data.class_names)
            tracker.log_artifact(run_id, tmp)
        say(f"refit of {refit_of} on train+val for {epochs} epochs: MLflow run {run_id}")
        # This frame outlives the block: drop its references so the block's exit can free them.
        del model, network, train_ds, callbacks
        return run_id


def _train(exp, data, train_files, val_files, tracker, run_id, pruning_hook, say, extra_callbacks, stop,
           init_weights, plan) -> tuple[RunResult, float]:
    """The run's body; returns its result and the ``time.time()`` at which training ended."""
    from ._imports import tensorflow
    from .data import pipeline

    tf = tensorflow()
    import keras

    cfg = exp.config

    # --- setup
    acc, global_batch, schedule = _setup(cfg, say)

    # --- data
    num_classes = len(data.class_names)
    steps = pipeline.steps_per_epoch(train_files.count, global_batch, acc.drop_remainder)
    prep = Preprocessing.choose(cfg, acc)
    train_ds = _training_data(data, train_files.split, cfg, global_batch, acc, prep)
    val_ds = validation_data(data, cfg, global_batch, prep, with_ids=True)
    val_ids, val_labels = _ids_and_labels(val_ds)
    val_pairs = val_ds.map(lambda image, label, record_id: (image, label))
    val_images = val_ds.map(lambda image, label, record_id: image)

    params = _run_params(exp, data, train_files, acc, global_batch, steps, prep, val_images=val_files.count)
    tracker.log_params(run_id, params)
    tracker.log_dataset(
        run_id, _dataset(data, cfg, params["data_fingerprint"], "training", train=train_files.count, val=val_files.count)
    )

    # --- model
    try:
        model, network = _built_model(cfg, acc, num_classes, prep, exp.weights_dir)
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise out_of_memory(cfg, exc) from None
    if init_weights is not None:
        from .models import load_saved_weights

        load_saved_weights(network, init_weights)
    tracker.log_params(run_id, {"phases": _describe_phases(plan, network)})

    # --- train
    timer = _EpochTimer(steps * global_batch)
    start = cfg.early_stopping_start_epoch
    start = cfg.lr_rampup_epochs + cfg.lr_sustain_epochs if start is None else start
    # Early stopping never ends a phase that another follows: a frozen backbone's plateau is
    # what the fine-tuning after it is for.
    best = _BestEpoch(cfg.early_stopping_patience, max(start, plan[-1].start))
    logger = _Logger(tracker, run_id, schedule, acc.replicas, cfg.epochs, say, pruning_hook)
    callbacks = [
        timer,
        _StopOnNonFinite(),
        keras.callbacks.LearningRateScheduler(lambda epoch, _lr: schedule.lr(epoch, acc.replicas)),
        best,
        logger,
        *extra_callbacks,
    ]
    pruned: Pruned | None = None
    try:
        # Keras validates the whole split each epoch (val_loss, val_accuracy and the streaming
        # val_macro_f1, on the accelerator), before the callbacks' on_epoch_end.
        _fit_phases(model, network, plan, train_ds, cfg=cfg, acc=acc, schedule=schedule, num_classes=num_classes,
                    logger=logger, say=say, steps_per_epoch=steps, validation_data=val_pairs, callbacks=callbacks)
    except Pruned as exc:
        pruned = exc
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise out_of_memory(cfg, exc) from None
    fit_end = time.time()
    best.restore_best(model)

    # --- evaluate and log
    # One predict with the best weights gives the probabilities the ensemble needs.
    val_probs = model.predict(val_images, verbose=0).astype(np.float32)
    best_epoch = best.best_epoch
    summary = {
        "best_val_macro_f1": best.best_f1,
        "best_epoch": best_epoch,
        "epochs_run": len(logger.history),
        "first_epoch_time_s": timer.times[0] if timer.times else None,
        "mean_epoch_time_s": float(np.mean(timer.times[1:])) if len(timer.times) > 1 else None,
        "peak_memory_mb": _peak_memory_mb(tf),
    }
    if pruned is not None:
        summary["pruned_at_epoch"] = pruned.epoch
    stopped = pruned is None and stop is not None and stop.stopped
    if stopped:
        summary["stopped_at_epoch"] = len(logger.history)
    tracker.log_metrics(run_id, summary)
    _save_artifacts(
        tracker, run_id, network, exp, schedule, acc.replicas, logger.history, val_ids, val_labels, val_probs, data.class_names
    )
    state = "pruned" if pruned is not None else "stopped" if stopped else "finished"
    tags = {TAG_STATE: state}
    if stopped:
        tags[TAG_PREFIX + "stopped_by"] = "budget"
    tracker.set_tags(run_id, tags)
    shown = f"stopped by the budget after epoch {len(logger.history)}" if stopped else state
    say(f"best val_macro_f1 {best.best_f1:.4f} at epoch {best_epoch} ({shown}); MLflow run {run_id}")
    result = RunResult(
        run_id=run_id,
        state=state,
        best_val_macro_f1=best.best_f1,
        best_epoch=best_epoch,
        epochs_run=len(logger.history),
        history=logger.history,
        val_ids=val_ids,
        val_labels=val_labels,
        val_probs=val_probs,
    )
    return result, fit_end


class _KerasRetracingFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to ... triggered tf.function retracing"
    warning about Keras' own train/test/predict step functions.

    TensorFlow counts traces per Python code object, not per function, and every model Keras
    compiles makes new step functions from the same code, each traced for the full and the
    partial last batch; in a process that trains many models (a sweep worker) those first
    traces add up to this false alarm after a few trials. Warnings about other functions pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "<function TensorFlowTrainer." in message)


def _quiet_keras_retracing() -> None:
    """Install :class:`_KerasRetracingFilter` on TensorFlow's logger (once per process)."""
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _KerasRetracingFilter) for f in logger.filters):
        logger.addFilter(_KerasRetracingFilter())


def _setup(cfg: ExperimentConfig, say: Callable[[str], None]):
    """Seed everything, pick the accelerator; returns (accelerator, global batch, schedule)."""
    import keras

    from .strategy import detect

    _quiet_keras_retracing()

    keras.utils.set_random_seed(cfg.seed)
    acc = detect(cfg.strategy, cfg.mixed_precision)
    global_batch = acc.global_batch(cfg.batch_size_per_replica)
    say(f"accelerator: {acc.description}, {acc.replicas} replica(s), global batch {global_batch}, precision {acc.precision}")
    return acc, global_batch, schedule_for(cfg)


@dataclass(frozen=True)
class Preprocessing:
    """Where a run augments and normalises its images, hence what its pipelines ship.

    ``normalization`` is the network's (:func:`~flower_exp.models.normalization_for`). With
    ``on_device`` the pipelines ship ``uint8`` batches and a
    :class:`~flower_exp.device_preprocessing.DevicePreprocessing` stage augments and
    normalises them in the training step; otherwise the host pipeline does both.
    """

    normalization: str
    on_device: bool

    @classmethod
    def choose(cls, cfg: ExperimentConfig, acc) -> Preprocessing:
        """``augment.runs_on``: ``auto`` is the accelerator on a GPU or TPU, the host on a CPU."""
        from .models import normalization_for

        on_device = acc.kind in ("gpu", "tpu") if cfg.augment.runs_on == "auto" else cfg.augment.runs_on == "device"
        return cls(normalization_for(cfg.architecture), on_device)

    @property
    def pipeline_normalization(self) -> str:
        """The normalisation the tf.data pipelines apply."""
        return "none" if self.on_device else self.normalization


def validation_data(data, cfg: ExperimentConfig, global_batch: int, prep: Preprocessing, with_ids: bool = False):
    """The validation split as a run evaluates it (cached, labels checked)."""
    from .data import pipeline

    return pipeline.make_dataset(
        data.root,
        "val",
        image_size=cfg.image_size,
        batch_size=global_batch,
        normalization=prep.pipeline_normalization,
        with_ids=with_ids,
        num_classes=len(data.class_names),
    )


def _training_data(data, split: str, cfg: ExperimentConfig, global_batch: int, acc, prep: Preprocessing):
    from .data import pipeline

    return pipeline.make_dataset(
        data.root,
        split,
        image_size=cfg.image_size,
        batch_size=global_batch,
        normalization=prep.pipeline_normalization,
        augment_cfg=None if prep.on_device else cfg.augment,
        extra=[pipeline.DataSource(root, splits) for root, splits in data.extra],
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        drop_remainder=acc.drop_remainder,
        num_classes=len(data.class_names),
    )


def _built_model(cfg: ExperimentConfig, acc, num_classes: int, prep: Preprocessing, weights_dir: str | None):
    """The configured network, built under the accelerator's strategy and precision (not compiled:
    :func:`_fit_phases` compiles it for each phase).

    Returns ``(model to fit, network to save)``: the same model, or with ``prep.on_device`` the
    network behind a :class:`~flower_exp.device_preprocessing.DevicePreprocessing` stage that
    takes the pipeline's ``uint8`` batches (both share the network's weights).
    """
    from .models import create_model
    from .strategy import precision_policy

    with precision_policy(acc.precision), acc.strategy.scope():
        network = create_model(
            cfg.architecture,
            num_classes=num_classes,
            image_size=cfg.image_size,
            weights=cfg.weights,
            weights_dir=weights_dir,
            dropout=cfg.dropout,
            cnn_width=cfg.cnn_width,
            cnn_depth=cfg.cnn_depth,
            cnn_dropout=cfg.cnn_dropout,
            cnn_bn_momentum=cfg.cnn_bn_momentum,
        )
        model = network
        if prep.on_device:
            from .device_preprocessing import training_model

            model = training_model(network, cfg.image_size, cfg.augment, prep.normalization, cfg.seed)
    return model, network


def _compile(model, cfg: ExperimentConfig, acc, schedule: LRSchedule, num_classes: int, epoch: int) -> None:
    """Compile ``model`` for training from ``epoch`` (0-based) on, under the accelerator's
    strategy and precision. Each phase gets a fresh Adam: an optimizer keeps state only for the
    variables that were trainable when it was first used."""
    import keras

    from .metrics import MacroF1
    from .strategy import precision_policy

    with precision_policy(acc.precision), acc.strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=schedule.lr(epoch, acc.replicas)),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(num_classes)],
            jit_compile=cfg.jit_compile,
            steps_per_execution=cfg.steps_per_execution,
        )


def _fit_phases(model, network, plan: list[Phase], train_ds, *, cfg: ExperimentConfig, acc, schedule: LRSchedule,
                num_classes: int, logger: _Logger, say: Callable[[str], None], **fit_kwargs) -> None:
    """Train ``plan`` phase by phase on one model: set what trains, recompile (Keras applies a
    change of ``trainable`` only then), and ``fit`` from the phase's first epoch
    (``initial_epoch``), so the LR schedule, the per-epoch metrics, best-epoch keeping, early
    stopping, the pruning hook and the budget's stop (all in ``fit_kwargs["callbacks"]``) see
    one run whose epochs count on. A phase that ended early (early stopping, the budget) ends
    training."""
    from .models import set_backbone_trainable

    for phase in plan:
        if phase.layers is not None:
            set_backbone_trainable(network, phase.layers)
        _compile(model, cfg, acc, schedule, num_classes, phase.start)
        if phase.layers is not None:
            say(f"epochs {phase.start + 1}-{phase.end}: {_phase_text(phase, network)}, "
                f"{_trainable_params(model):,} trainable parameters")
        model.fit(train_ds, initial_epoch=phase.start, epochs=phase.end, verbose=0, shuffle=False, **fit_kwargs)
        if len(logger.history) < phase.end:
            break


def _phase_text(phase: Phase, network) -> str:
    """What trains in ``phase``, for people (the ``phases`` param, progress lines)."""
    from .models import backbone

    if phase.layers is None:
        return "all layers"
    total = len(backbone(network).layers)
    count = total if phase.layers == "all" else min(int(phase.layers), total)
    if count == 0:
        return "head only, backbone frozen"
    return f"head and top {count} of {total} backbone layers (BatchNormalization frozen)"


def _describe_phases(plan: list[Phase], network) -> str:
    """The ``phases`` param: each phase's epochs (1-based) and what trains in them."""
    return "; ".join(f"epochs {p.start + 1}-{p.end}: {_phase_text(p, network)}" for p in plan)


def _trainable_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _run_params(exp, data, train_files, acc, global_batch, steps, prep: Preprocessing, **extra) -> dict[str, Any]:
    from .data.leakage import data_fingerprint

    cfg = exp.config
    return {
        **_hyperparameters(cfg),
        "num_classes": len(data.class_names),
        "train_split": train_files.split,
        "train_images": train_files.count,
        **extra,
        "stored_image_size": train_files.stored_size,
        "normalization": prep.normalization,
        "preprocessing_on": "device" if prep.on_device else "host",
        "accelerator": acc.kind,
        "replicas": acc.replicas,
        "global_batch_size": global_batch,
        "precision": acc.precision,
        "steps_per_epoch": steps,
        "weights_file": _weights_file(exp),
        "data_dir": data.root,
        "data_fingerprint": data_fingerprint(data.root, cfg.image_size, [root for root, _ in data.extra]),
        "git_commit": git_commit(Path(exp.config_path).parent) or "none",
        **{f"version.{k}": v for k, v in package_versions().items()},
    }


def _dataset(data, cfg: ExperimentConfig, fingerprint: str, context: str, **counts: int) -> DatasetRecord:
    """The run's data as an MLflow dataset input: the split folder's name, the fingerprint the
    params carry, and the image counts of the splits read (extra sources included)."""
    name = Path(data.root.rstrip("/")).name or cfg.name
    profile = {**counts, "classes": len(data.class_names), "image_size": cfg.image_size,
               "extra_sources": len(data.extra)}
    return DatasetRecord(name=name, digest=fingerprint, source=data.root, profile=profile, context=context)


@contextmanager
def _freeing_run_memory() -> Iterator[None]:
    """Free what a run leaves behind in the process once the block is over, however it ends
    (a sweep worker runs many trials in one process; an out-of-memory trial must hand its
    memory to the next): Keras' global graph state (``clear_session``) and the gradient
    functions TensorFlow registered while the block ran, then collect.

    Why the gradient functions: Keras' TensorFlow optimizer all-reduces the gradients in
    every train step, even on one device (``ReplicaContext.all_reduce``), and that op is a
    ``tf.custom_gradient``. Traced in graph mode (the ``tf.function`` train step),
    ``tf.custom_gradient`` registers its gradient as ``CustomGradient-<uid>`` in
    TensorFlow's process-wide gradient registry
    (``ops._gradient_registry``) and never removes it; the registered closure holds the step's
    gradient tensors, hence the whole train-step ``FuncGraph`` and, through it, the optimizer's
    per-variable update graphs. ``keras.backend.clear_session()`` does not touch that
    registry, so a sweep worker kept every trial's graphs (~18 MiB per trial, see
    benchmarks/memory.py; TensorFlow issues #27492, #97697). Only names registered inside the
    block are dropped: they belong to graphs traced for this run, which nothing uses after it.
    """
    from ._imports import tensorflow

    tensorflow()
    import keras
    from tensorflow.python.framework import ops  # the registry has no public API

    # A private attribute: if a TensorFlow release renames it, skip the cleanup (leak, not crash).
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    before = set(registry) if isinstance(registry, dict) else None
    try:
        yield
    finally:
        keras.backend.clear_session()
        if before is not None:
            for name in [n for n in registry if n not in before and n.startswith("CustomGradient-")]:
                del registry[name]
        gc.collect()


# --------------------------------------------------------------------------- callbacks


def callback_base():
    """``keras.callbacks.Callback``, imported lazily (TensorFlow configured first)."""
    from ._imports import tensorflow

    tensorflow()  # configures TensorFlow logging before Keras imports it
    import keras

    return keras.callbacks.Callback


class _EpochTimer(callback_base()):
    """Training time of each epoch (the validation pass excluded) and images/s."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.times: list[float] = []
        self._start = 0.0
        self._train_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        # fit's validation pass starts here: the epoch's training part is over.
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = (self._train_end or time.perf_counter()) - self._start
        self.times.append(elapsed)
        if logs is not None:
            logs["epoch_time_s"] = elapsed
            logs["images_per_s"] = self.images_per_epoch / elapsed if elapsed > 0 else 0.0


class _StopOnNonFinite(callback_base()):
    """Fail the run the moment the loss is NaN/inf (TerminateOnNaN would end it quietly).

    Reading every step's loss adds no host-device sync: with the TensorFlow backend Keras 3
    converts each step's logs to Python floats itself (no async callback dispatch there);
    ``steps_per_execution`` is what makes those syncs rarer on an accelerator.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLoss(
                f"training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}; "
                "lower lr_max or check the data"
            )


class _BestEpoch(callback_base()):
    """Keeps the best epoch by validation macro-F1 (weights and epoch in memory: one model,
    not one checkpoint per epoch) and stops early on it. The scores come from Keras' own
    validation pass (``val_loss``, ``val_accuracy``, the streaming ``val_macro_f1``)."""

    def __init__(self, patience: int, start_epoch: int):
        super().__init__()
        self.start_epoch = start_epoch
        self.patience = patience
        self.best_f1 = -1.0
        self.best_epoch = 0
        self._best_weights = None
        self._wait = 0

    def on_train_begin(self, logs=None):
        # Each phase is one fit call: patience counts from the phase's first epoch, because the
        # first fine-tuning epochs (a fresh optimizer, new layers training) are not comparable
        # with a frozen backbone's plateau. The best epoch and its weights carry over (the
        # weights list keeps its order whatever is trainable).
        self._wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_macro_f1" not in logs:
            return
        if not (math.isfinite(logs["val_loss"]) and math.isfinite(logs["val_macro_f1"])):
            raise NonFiniteLoss(f"validation loss became {logs['val_loss']} at epoch {epoch + 1}; lower lr_max")
        f1 = float(logs["val_macro_f1"])
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch = f1, epoch + 1
            self._best_weights = self.model.get_weights()
            self._wait = 0
        else:
            self._wait += 1
            if self.patience and self._wait >= self.patience and epoch + 1 > self.start_epoch:
                self.model.stop_training = True

    def restore_best(self, model) -> None:
        if self._best_weights is not None:
            model.set_weights(self._best_weights)


class _StopAtDeadline(callback_base()):
    """Ends training at the last epoch boundary that leaves time for one more epoch's worth
    of margin plus the finishing work (restore, score, save, log) before the deadline.

    An epoch is timed whole (training and validation pass); the next one is assumed to take as
    long as the slowest of the last two (the first epoch includes tracing, so it is
    pessimistic only until a second one exists). Without a measured reserve, finishing is
    assumed to take half an epoch (a prediction pass over validation plus saving) and 10 s.

    ``epochs``: the run's, across its phases (each phase's ``fit`` only knows its own end).
    ``fine_tune_from``: the 0-based first epoch of a fine-tuning phase after a frozen one,
    predicted to take up to :data:`_FINE_TUNE_COST` times the frozen epochs."""

    def __init__(self, deadline: Deadline, finish_reserve_s: float | None, epochs: int, fine_tune_from: int | None = None):
        super().__init__()
        self.deadline, self.finish_reserve_s = deadline, finish_reserve_s
        self.epochs, self.fine_tune_from = epochs, fine_tune_from
        self.stopped = False
        self._times: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self._times.append(time.time() - self._start)
        if epoch + 1 >= self.epochs:
            return  # the last epoch anyway: not a stop
        next_epoch = max(self._times[-2:])
        if epoch + 1 == self.fine_tune_from:
            next_epoch *= _FINE_TUNE_COST
        reserve = self.finish_reserve_s if self.finish_reserve_s is not None else 0.5 * next_epoch + 10.0
        if self.deadline.left_s() < next_epoch + reserve:
            self.stopped = True
            self.model.stop_training = True


class _Logger(callback_base()):
    """Per-epoch metrics to MLflow (step = 1-based epoch), a progress line, the pruning hook."""

    def __init__(self, tracker, run_id, schedule, replicas, epochs, say, pruning_hook):
        super().__init__()
        self.tracker, self.run_id = tracker, run_id
        self.schedule, self.replicas, self.epochs = schedule, replicas, epochs
        self.say, self.pruning_hook = say, pruning_hook
        self.history: list[dict[str, float]] = []
        self._trainable = 0

    def on_train_begin(self, logs=None):
        # Once per phase (one fit call each): what trains changes only between phases.
        self._trainable = _trainable_params(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {
            "epoch": epoch + 1,
            "train_loss": float(logs.get("loss", float("nan"))),
            "train_accuracy": float(logs.get("accuracy", float("nan"))),
            "lr": self.schedule.lr(epoch, self.replicas),
            "epoch_time_s": logs["epoch_time_s"],
            "images_per_s": logs["images_per_s"],
            "trainable_params": self._trainable,
        }
        # A refit trains on train+val and has no validation scores.
        row.update({k: logs[k] for k in ("val_loss", "val_accuracy", "val_macro_f1") if k in logs})
        self.history.append(row)
        self.tracker.log_metrics(self.run_id, {k: row[k] for k in EPOCH_METRICS if k in row}, step=epoch + 1)
        scores = f"loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.3f}  "
        if "val_macro_f1" in row:
            scores += f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}  val_macro_f1 {row['val_macro_f1']:.4f}  "
        self.say(
            f"epoch {epoch + 1}/{self.epochs}  {scores}lr {row['lr']:.2e}  "
            f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)"
        )
        if self.pruning_hook is not None and "val_macro_f1" in row:
            self.pruning_hook(epoch + 1, row["val_macro_f1"])


# --------------------------------------------------------------------------- helpers


def _hyperparameters(cfg: ExperimentConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        if key in _NOT_PARAMS:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _weights_file(exp: ResolvedExperiment) -> str:
    """The ``weights_file`` param: the local file the network starts from, ``download`` when
    Keras downloads it, ``none`` without pretrained weights."""
    from .models import resolve_weights

    weights = resolve_weights(exp.config.architecture, exp.config.weights, exp.weights_dir)
    return weights if weights == "none" or os.path.isfile(weights) else "download"


def _ids_and_labels(val_ds) -> tuple[np.ndarray, np.ndarray]:
    ids, labels = [], []
    for _images, batch_labels, batch_ids in val_ds.as_numpy_iterator():
        labels.append(batch_labels)
        ids.append(batch_ids)
    return np.concatenate(ids).astype(str), np.concatenate(labels).astype(np.int64)


def _peak_memory_mb(tf) -> float:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        try:
            return tf.config.experimental.get_memory_info(gpus[0].name.replace("/device:", ""))["peak"] / 2**20
        except (ValueError, tf.errors.OpError):
            pass
    # ru_maxrss is in KiB on Linux: the host process' high-water mark.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_artifacts(tracker: Tracker, run_id: str, *args) -> None:
    """Write the run's artifacts to a temporary folder and upload them. A full or unwritable
    disk is not the configuration's fault: :class:`RecordingFailed`, naming the path."""
    try:
        with tempfile.TemporaryDirectory(prefix="flower-exp-run-") as tmp:
            _write_artifacts(Path(tmp), *args)
            tracker.log_artifact(run_id, tmp)
    except OSError as exc:
        where = exc.filename or tempfile.gettempdir()
        raise RecordingFailed(f"cannot write the run's artifacts to {where} ({exc.strerror or exc})") from None


def _write_artifacts(
    folder: Path, model, exp, schedule, replicas, history, val_ids, val_labels, val_probs, class_names
) -> None:
    model_dir = folder / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    np.savez_compressed(folder / "val_probs.npz", ids=val_ids, labels=val_labels, probs=val_probs)
    _write_history(folder / "history.csv", history)
    plot_schedule(schedule, exp.config.epochs, str(folder / "lr_schedule.png"), replicas)
    confusion_png(val_probs, val_labels, class_names, str(folder / "confusion_matrix.png"), "validation confusion matrix (best epoch)")
    _write_config(folder / "config.yaml", exp, class_names)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *EPOCH_METRICS], restval="")
        writer.writeheader()
        writer.writerows(history)


def _write_config(path: Path, exp: ResolvedExperiment, class_names: list[str]) -> None:
    resolved = exp.config.model_dump(mode="json")
    resolved.update(data_dir=exp.data_dir, classes=class_names)
    path.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
