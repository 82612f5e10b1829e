"""One tracked training run, read top to bottom: setup → data → model → train → evaluate → log.

:func:`run` trains one configuration and records it in MLflow (params, per-epoch metrics,
summary metrics, artifacts); the sweep calls it once per trial with a pruning hook. With the
transfer-learning settings, training is :func:`phases`: one ``fit`` call per phase on the same
model, recompiled in between, its epochs counted on across them.
"""

from __future__ import annotations

import gc
import logging
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .budget import Deadline
from .callbacks import BestEpoch, EpochTimer, Logger, StopAtDeadline, StopOnNonFinite, trainable_params
from .config import ExperimentConfig, ResolvedExperiment, check_backbone_settings, project_dir
from .memory_estimate import check_memory, out_of_memory
from .run_record import RunArtifacts, dataset_record, run_params, save_artifacts, write_artifacts
from .schedule import LRSchedule
from .tracking import TAG_KIND, TAG_PREFIX, TAG_STATE, Tracker, default_target, source_tags

if TYPE_CHECKING:
    from .strategy import Accelerator


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
    run_tags = {
        TAG_KIND: "train",
        TAG_PREFIX + "architecture": cfg.architecture,
        **source_tags(Path(exp.config_path).parent),
        **(tags or {}),
    }
    with tracker.run(name, run_tags, parent_run_id) as run_id:
        if on_run_start is not None:
            on_run_start(run_id)
        plan = phases(cfg, cfg.epochs, trained_head=init_weights is not None)
        fine_tune_from = plan[1].start if len(plan) > 1 else None
        stop = StopAtDeadline(deadline, finish_reserve_s, cfg.epochs, fine_tune_from) if deadline is not None else None
        with pipeline.shard_errors_named(train_files, val_files, num_classes=len(data.class_names)), _freeing_run_memory():
            result, fit_end = _train(
                exp,
                data,
                train_files,
                val_files,
                tracker,
                run_id,
                pruning_hook,
                say,
                [*(callbacks or []), *([stop] if stop else [])],
                stop,
                init_weights,
                plan,
            )
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
    from .data import pipeline
    from .data.dataset import open_data

    check_backbone_settings(exp)
    say = progress or (lambda _m: None)
    cfg = exp.config.model_copy(update={"epochs": epochs})
    exp = exp.model_copy(update={"config": cfg})
    data = open_data(exp, log=say)
    extra = [pipeline.DataSource(root, splits) for root, splits in data.extra]
    train_files = pipeline.split_files(data.root, "train+val", cfg.image_size, extra)
    tags = {
        TAG_KIND: "refit",
        TAG_PREFIX + "refit_of": refit_of,
        TAG_PREFIX + "architecture": cfg.architecture,
        **source_tags(Path(exp.config_path).parent),
    }
    named = pipeline.shard_errors_named(train_files, num_classes=len(data.class_names))
    with tracker.run(f"refit-{cfg.architecture}-{cfg.image_size}px", tags, parent_run_id) as run_id, named, _freeing_run_memory():
        setup = setup_run(exp, data, train_files, say)
        tracker.log_params(run_id, {**setup.params, "epochs": epochs, "refit_of": refit_of})
        tracker.log_dataset(
            run_id, dataset_record(data, cfg, setup.params["data_fingerprint"], "refit", **{"train+val": train_files.count})
        )
        model, network = setup.built_model()
        plan = phases(cfg, epochs)
        tracker.log_params(run_id, {"phases": _describe_phases(plan, network)})
        timer = EpochTimer(setup.steps * setup.global_batch)
        logger = Logger(tracker, run_id, setup.schedule, setup.acc.replicas, epochs, say, None)
        callbacks = [timer, StopOnNonFinite(), setup.lr_scheduler(), logger]
        _fit_phases(setup, model, network, plan, logger, say, callbacks=callbacks)
        tracker.log_metrics(
            run_id,
            {
                "epochs_run": len(logger.history),
                "first_epoch_time_s": timer.times[0],
                "mean_epoch_time_s": float(np.mean(timer.times[1:])) if len(timer.times) > 1 else None,
            },
        )
        # Its own upload, not save_artifacts: that turns a disk error into RecordingFailed, which
        # a refit has never raised.
        with tempfile.TemporaryDirectory(prefix="flower-exp-refit-") as tmp:
            write_artifacts(
                Path(tmp), RunArtifacts(network, exp, setup.schedule, setup.acc.replicas, logger.history, data.class_names)
            )
            tracker.log_artifact(run_id, tmp)
        say(f"refit of {refit_of} on train+val for {epochs} epochs: MLflow run {run_id}")
        # This frame outlives the block: drop its references so the block's exit can free them.
        del model, network, setup, callbacks
        return run_id


def _train(
    exp, data, train_files, val_files, tracker, run_id, pruning_hook, say, extra_callbacks, stop, init_weights, plan
) -> tuple[RunResult, float]:
    """The run's body; returns its result and the ``time.time()`` at which training ended."""
    from ._imports import tensorflow

    tf = tensorflow()
    cfg = exp.config

    # --- setup and data
    setup = setup_run(exp, data, train_files, say, val_images=val_files.count)
    val_ds = validation_data(data, cfg, setup.global_batch, setup.prep, with_ids=True)
    val_ids, val_labels = _ids_and_labels(val_ds)
    val_pairs = val_ds.map(lambda image, label, record_id: (image, label))
    val_images = val_ds.map(lambda image, label, record_id: image)
    tracker.log_params(run_id, setup.params)
    tracker.log_dataset(
        run_id,
        dataset_record(data, cfg, setup.params["data_fingerprint"], "training", train=train_files.count, val=val_files.count),
    )

    # --- model
    try:
        model, network = setup.built_model()
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        raise out_of_memory(cfg, exc) from None
    if init_weights is not None:
        from .models import load_saved_weights

        load_saved_weights(network, init_weights)
    tracker.log_params(run_id, {"phases": _describe_phases(plan, network)})

    # --- train
    timer = EpochTimer(setup.steps * setup.global_batch)
    start = cfg.early_stopping_start_epoch
    start = cfg.lr_rampup_epochs + cfg.lr_sustain_epochs if start is None else start
    # Early stopping never ends a phase that another follows: a frozen backbone's plateau is
    # what the fine-tuning after it is for.
    best = BestEpoch(cfg.early_stopping_patience, max(start, plan[-1].start))
    logger = Logger(tracker, run_id, setup.schedule, setup.acc.replicas, cfg.epochs, say, pruning_hook)
    callbacks = [timer, StopOnNonFinite(), setup.lr_scheduler(), best, logger, *extra_callbacks]
    pruned: Pruned | None = None
    try:
        # Keras validates the whole split each epoch (val_loss, val_accuracy and the streaming
        # val_macro_f1, on the accelerator), before the callbacks' on_epoch_end.
        _fit_phases(setup, model, network, plan, logger, say, validation_data=val_pairs, callbacks=callbacks)
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
    save_artifacts(
        tracker,
        run_id,
        RunArtifacts(
            network,
            exp,
            setup.schedule,
            setup.acc.replicas,
            logger.history,
            data.class_names,
            val_ids=val_ids,
            val_labels=val_labels,
            val_probs=val_probs,
        ),
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


@dataclass(frozen=True)
class RunSetup:
    """What a run trains with, its model aside: built by :func:`setup_run` for :func:`run`,
    :func:`refit` and benchmarks/overhead.py's bare ``fit``, so all three start the same way."""

    exp: ResolvedExperiment
    num_classes: int
    acc: Accelerator
    global_batch: int
    schedule: LRSchedule
    prep: Preprocessing
    steps: int  # training steps per epoch
    train_ds: Any  # the training split's tf.data pipeline
    params: dict[str, Any]  # the run's MLflow params, not logged yet

    def built_model(self):
        """The configured network, built under the accelerator's strategy and precision (not
        compiled: :func:`_fit_phases` compiles it for each phase).

        Returns ``(model to fit, network to save)``: the same model, or with ``prep.on_device``
        the network behind a :class:`~flower_exp.device_preprocessing.DevicePreprocessing` stage
        that takes the pipeline's ``uint8`` batches (both share the network's weights).
        """
        from .models import create_model
        from .strategy import precision_policy

        cfg = self.exp.config
        with precision_policy(self.acc.precision), self.acc.strategy.scope():
            network = create_model(
                cfg.architecture,
                num_classes=self.num_classes,
                image_size=cfg.image_size,
                weights=cfg.weights,
                weights_dir=self.exp.weights_dir,
                dropout=cfg.dropout,
                cnn_width=cfg.cnn_width,
                cnn_depth=cfg.cnn_depth,
                cnn_dropout=cfg.cnn_dropout,
                cnn_bn_momentum=cfg.cnn_bn_momentum,
            )
            model = network
            if self.prep.on_device:
                from .device_preprocessing import training_model

                model = training_model(network, cfg.image_size, cfg.augment, self.prep.normalization, cfg.seed)
        return model, network

    def lr_scheduler(self):
        """The Keras callback that sets each epoch's learning rate from :attr:`schedule`."""
        import keras

        return keras.callbacks.LearningRateScheduler(lambda epoch, _lr: self.schedule.lr(epoch, self.acc.replicas))


def setup_run(exp: ResolvedExperiment, data, train_files, say: Callable[[str], None], **extra_params: Any) -> RunSetup:
    """Seed everything, pick the accelerator, and build the training pipeline of
    ``train_files`` (a :class:`~flower_exp.data.pipeline.SplitFiles` of ``data``) and the run's
    params (``extra_params`` added after the image counts)."""
    import keras

    from .data import pipeline
    from .strategy import detect

    _quiet_keras_retracing()
    cfg = exp.config
    keras.utils.set_random_seed(cfg.seed)
    acc = detect(cfg.strategy, cfg.mixed_precision)
    global_batch = acc.global_batch(cfg.batch_size_per_replica)
    say(f"accelerator: {acc.description}, {acc.replicas} replica(s), global batch {global_batch}, precision {acc.precision}")
    steps = pipeline.steps_per_epoch(train_files.count, global_batch, acc.drop_remainder)
    prep = Preprocessing.choose(cfg, acc)
    train_ds = pipeline.make_dataset(
        data.root,
        train_files.split,
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
    params = run_params(exp, data, train_files, acc, global_batch, steps, prep, **extra_params)
    return RunSetup(exp, len(data.class_names), acc, global_batch, schedule_for(cfg), prep, steps, train_ds, params)


def _compile(model, setup: RunSetup, epoch: int) -> None:
    """Compile ``model`` for training from ``epoch`` (0-based) on, under the accelerator's
    strategy and precision. Each phase gets a fresh Adam: an optimizer keeps state only for the
    variables that were trainable when it was first used."""
    import keras

    from .metrics import MacroF1
    from .strategy import precision_policy

    acc, cfg = setup.acc, setup.exp.config
    with precision_policy(acc.precision), acc.strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=setup.schedule.lr(epoch, acc.replicas)),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(setup.num_classes)],
            jit_compile=cfg.jit_compile,
            steps_per_execution=cfg.steps_per_execution,
        )


def _fit_phases(
    setup: RunSetup, model, network, plan: list[Phase], logger: Logger, say: Callable[[str], None], **fit_kwargs
) -> None:
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
        _compile(model, setup, phase.start)
        if phase.layers is not None:
            say(
                f"epochs {phase.start + 1}-{phase.end}: {_phase_text(phase, network)}, "
                f"{trainable_params(model):,} trainable parameters"
            )
        model.fit(
            setup.train_ds,
            initial_epoch=phase.start,
            epochs=phase.end,
            steps_per_epoch=setup.steps,
            verbose=0,
            shuffle=False,
            **fit_kwargs,
        )
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
