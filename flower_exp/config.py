"""Typed configuration: ``experiments.yaml``.

Every setting a user may change is a typed field with a default and a description, and a
bad file fails up front with one line naming the file, the key and what is allowed.
``experiments.yaml`` is looked up in the current working directory (like git or MLflow do)
unless ``--config PATH`` is given; without one, the copy shipped in the package is used so
``flower-exp`` works from an empty folder too.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import secrets
import stat
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from .errors import ConfigError
from .yaml_io import load_yaml

CONFIG_FILE = "experiments.yaml"
DATA_DIR_ENV = "GCS_DS_PATH"
BUILTIN_CLASSES = {"petals": "petals-classes.txt"}
BUILTIN_PREFIX = "builtin:"

PositiveInt = Annotated[int, Field(gt=0)]


def _layer_count(value: Any) -> int | str:
    # One plain check instead of pydantic's union of int and "all", whose two errors would
    # name the key as fine_tune_layers.int and never say that 'all' is allowed.
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise PydanticCustomError("layer_count", "Input should be a number of layers >= 0 or 'all'")


# An alias, not a bare Annotated: pydantic strips a field's Annotated metadata from its
# annotation, and sweep files are type-checked against the annotation (_check_type).
LayerCount = TypeAliasType("LayerCount", Annotated[int | Literal["all"], PlainValidator(_layer_count)])
# Settings of the transfer-learning recipe, and their values that leave it off.
BACKBONE_SETTINGS = {"freeze_backbone_epochs": 0, "fine_tune_layers": "all"}


def _one_of(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


class _Strict(BaseModel):
    # Non-finite floats are never a meaningful setting or bound (.inf passes gt=0 checks).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(_Strict):
    """Training-split augmentation (validation and test are never augmented)."""

    enabled: bool = Field(True, description="Master switch for all augmentations below.")
    flip: bool = Field(True, description="Random left-right flip.")
    crop_scale: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="Random crop/zoom: crop a square whose side is uniformly drawn from "
        "[crop_scale, 1] of the image side, then resize back. 1.0 disables it.",
    )
    brightness: float = Field(0.1, ge=0.0, le=1.0, description="Max random brightness delta (0-1 scale); 0 disables.")
    contrast: float = Field(0.1, ge=0.0, lt=1.0, description="Max relative random contrast change; 0 disables.")
    runs_on: Literal["auto", "host", "device"] = Field(
        "auto",
        description="Where augmentation and normalisation run: 'host' in the tf.data pipeline on the CPU; "
        "'device' inside the training step on the accelerator (the pipeline ships uint8 batches, so host CPUs "
        "stop being the bottleneck of a TPU/GPU); 'auto' = device on a GPU or TPU, host on a CPU.",
    )


class DemoSpec(_Strict):
    """Recipe of a generated demo dataset (created on first use)."""

    classes: int = Field(6, ge=2, le=104, description="Number of synthetic flower classes.")
    per_class: PositiveInt = Field(60, description="Images per class across train/val/test.")
    sizes: list[PositiveInt] = Field([32, 64], min_length=1, description="Square image sizes written (one folder each).")
    seed: int = Field(0, description="Generator seed: same seed, identical bytes.")
    shards: PositiveInt = Field(4, description="Shards per split.")


class ExtraData(_Strict):
    """An extra training source in competition layout (e.g. external flower TFRecords)."""

    path: str = Field(description="Root of the source (local folder or gs:// URL), relative to the config file.")
    splits: list[str] = Field(["train"], min_length=1, description="Which of its splits to add to training.")

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if s not in ("train", "val")]
        if bad:
            raise ValueError(f"unknown split {bad[0]!r}; allowed: train, val")
        return value


class LeakageConfig(_Strict):
    """Duplicate-image guard between training data and validation/test data."""

    max_distance: int = Field(
        6, ge=0, le=32, description="Max Hamming distance (of 64 bits) between perceptual hashes counted as the same photo."
    )


class ExperimentConfig(_Strict):
    """One named experiment: where its data lives and the defaults of its runs."""

    name: str = Field("", description="Experiment name (the key in experiments.yaml; also the MLflow experiment).")
    description: str = Field("", description="Free text shown by `config show`.")
    data_dir: str | None = Field(
        None,
        description=f"Root of the competition layout: a local folder (relative to the config file) or a gs:// URL. "
        f"Unset: ${DATA_DIR_ENV}.",
    )
    generate: DemoSpec | None = Field(None, description="If set, data_dir holds a generated demo dataset, created on first use.")
    classes: list[str] | None = Field(None, description="Class names, in label order.")
    classes_file: str | None = Field(
        None,
        description="File of class names, one per line (relative to the config file), or "
        f"{', '.join(BUILTIN_PREFIX + k for k in BUILTIN_CLASSES)}. Default: <data_dir>/classes.txt.",
    )
    image_size: PositiveInt = Field(
        331, description="Square input size; read from tfrecords-jpeg-SxS or resized from the nearest larger size."
    )
    batch_size_per_replica: PositiveInt = Field(16, description="Batch size per accelerator replica (global = this x replicas).")
    shuffle_buffer: PositiveInt = Field(2048, description="Shuffle buffer of the training pipeline, in records.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentation.")
    extra_data: list[ExtraData] = Field([], description="Extra training sources; refused if they leak into val/test.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig, description="Leakage guard settings.")
    cache_dir: str = Field(
        "mlruns/cache", description="Where derived data (image hashes) is cached, relative to the config file."
    )
    seed: int = Field(42, description="Seed for shuffling, augmentation and initialisation.")

    # --- one training run (what a sweep varies) ---
    architecture: str = Field("cnn", description="Registered model name (flower-exp models lists them).")
    weights: str = Field(
        "none",
        description="none, imagenet, noisy-student (efficientnet_ns_*), pretrained (the architecture's best published "
        "weights; none for cnn) or a local weights file of the headless network.",
    )
    weights_dir: str | None = Field(
        None,
        description="Folder of pretrained weights files (relative to the config file), looked in first, then "
        "$FLOWER_EXP_WEIGHTS, then Keras' cache (~/.keras/models); a file found is used without downloading "
        "(flower-exp weights lists the file names).",
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description="Transfer learning: epochs that train only the new head, the pretrained backbone frozen, before "
        "fine_tune_layers of it train too (0: no frozen phase). Needs an architecture with a backbone (not cnn).",
    )
    fine_tune_layers: LayerCount = Field(
        "all",
        description="Transfer learning: top layers of the backbone trained after the frozen epochs (all: every "
        "one; 0: none, the backbone stays frozen; more than it has: all). Set either transfer key and the "
        "backbone's BatchNormalization layers stay frozen throughout.",
    )
    epochs: PositiveInt = Field(12, description="Maximum epochs (EarlyStopping may stop sooner).")
    early_stopping_patience: int = Field(
        4, ge=0, description="Epochs without val_macro_f1 improvement before stopping (best weights restored); 0 disables."
    )
    early_stopping_start_epoch: int | None = Field(
        None,
        ge=0,
        description="Epochs before early stopping may act (unset: lr_rampup_epochs + lr_sustain_epochs, "
        "since scores taken at peak learning rate say little).",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the softmax head.")
    cnn_width: PositiveInt = Field(32, description="cnn only: filters of the first block (doubling per block, capped at x16).")
    cnn_depth: PositiveInt = Field(4, description="cnn only: number of Conv2D/BatchNorm/Dropout blocks.")
    cnn_dropout: float = Field(0.25, ge=0.0, lt=1.0, description="cnn only: dropout after each block.")
    cnn_bn_momentum: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="cnn only: BatchNormalization moving-average momentum (PyTorch's 0.9 settles the "
        "inference statistics in far fewer steps than Keras' 0.99).",
    )
    lr_min: float = Field(1e-4, gt=0, description="LR schedule: floor of the exponential decay (and default ramp start).")
    lr_max: float = Field(
        8e-4, gt=0, description="LR schedule: peak, held for lr_sustain_epochs (x replicas unless lr_scale_by_replicas is off)."
    )
    lr_start: float | None = Field(None, gt=0, description="LR schedule: first ramp-up value (unset: lr_min).")
    lr_rampup_epochs: int = Field(4, ge=0, description="LR schedule: epochs of linear ramp-up to lr_max.")
    lr_sustain_epochs: int = Field(6, ge=0, description="LR schedule: epochs held at lr_max.")
    lr_decay: float = Field(0.8, gt=0, le=1, description="LR schedule: per-epoch exponential decay factor after the sustain.")
    lr_scale_by_replicas: bool = Field(True, description="Multiply lr_max by the number of replicas (TPU notebooks do).")
    lr_random_rampup: bool = Field(False, description="The seed's variant: random()*lr_min during ramp-up (seeded).")
    strategy: str = Field("auto", description="auto (TPU, else several GPUs, else default), tpu, mirrored, gpu or cpu.")
    mixed_precision: str = Field(
        "auto", description="auto (bfloat16 on TPU, float16 on GPU, off on CPU), off, float16, bfloat16."
    )
    jit_compile: bool = Field(False, description="XLA-compile the train step.")
    steps_per_execution: PositiveInt = Field(1, description="Batches per compiled call (raise on TPU, e.g. 16-32).")
    memory_check: bool = Field(
        True, description="Refuse a configuration whose estimated training memory is over twice what the device has."
    )

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        from .models import list_models

        return _one_of(value, list_models(), "architecture")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from .strategy import STRATEGIES

        return _one_of(value, STRATEGIES, "strategy")

    @field_validator("mixed_precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from .strategy import PRECISIONS

        return _one_of(value, PRECISIONS, "mixed_precision")

    @model_validator(mode="after")
    def _classes_once(self) -> ExperimentConfig:
        if self.classes is not None and self.classes_file is not None:
            raise ValueError("set either classes or classes_file, not both")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes contains duplicate names")
        return self


class ExperimentsFile(_Strict):
    """Top level of experiments.yaml."""

    default: str | None = Field(None, description="Experiment used when -e is not given (unset: the first one).")
    experiments: dict[str, ExperimentConfig] = Field(description="Named experiments.")


class ResolvedExperiment(BaseModel):
    """An experiment with every path made absolute and its class names loaded."""

    model_config = ConfigDict(frozen=True)

    config: ExperimentConfig
    config_path: str
    data_dir: str
    class_names: list[str] | None
    cache_dir: str
    extra_data: list[ExtraData]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weights_dir(self) -> str | None:
        """``weights_dir`` made absolute (relative to the project folder), or None. Resolved on
        use, so a trial's or a refit's configuration copied over this one keeps its own."""
        return weights_dir_of(self.config, Path(self.config_path))


def weights_dir_of(exp: ExperimentConfig, config_path: Path) -> str | None:
    """``exp.weights_dir`` made absolute against the project folder of ``config_path``, or None."""
    return _abs(exp.weights_dir, project_dir(config_path)) if exp.weights_dir else None


def backbone_conflict(key: str, value: Any, architecture: str) -> str | None:
    """Why ``key: value`` cannot train ``architecture`` (a message after the key), or None: a transfer-learning setting
    (:data:`BACKBONE_SETTINGS`) other than its off value needs a network with a pretrained
    backbone, and ``cnn`` is trained from scratch as a whole."""
    from .models import get_spec, list_models

    off = BACKBONE_SETTINGS.get(key)
    if key not in BACKBONE_SETTINGS or value == off or architecture not in list_models() or get_spec(architecture).has_backbone:
        return None
    return (
        f"{_shown(value)} needs an architecture with a backbone and {architecture} has none; allowed with "
        f"{architecture}: {off} (with a backbone: densenet*, efficientnet*)"
    )


def check_backbone_settings(exp: ResolvedExperiment) -> None:
    """Refuse, before a run starts, transfer-learning settings on an architecture without a
    backbone (:func:`backbone_conflict`). Checked on the configuration a run trains, not when
    a file is read: a sweep's experiment may set them for the architectures its trials pick."""
    for key in BACKBONE_SETTINGS:
        problem = backbone_conflict(key, getattr(exp.config, key), exp.config.architecture)
        if problem:
            raise ConfigError(f"{exp.config_path}: experiments.{exp.name}.{key}: {problem}")


# --------------------------------------------------------------------------- sweeps

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("hyperband", "median", "none")


class SamplerConfig(_Strict):
    """Optuna sampler."""

    name: str = Field("tpe", description="tpe (default), random or grid (grid: every param needs choices).")
    seed: int | None = Field(42, description="Sampler seed (reproducible suggestions).")
    multivariate: bool = Field(True, description="tpe: model parameters jointly.")
    group: bool = Field(True, description="tpe: handle conditional parameters as groups.")
    n_startup_trials: int = Field(5, ge=0, description="tpe: random trials before the model kicks in.")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, SAMPLERS, "sampler")


class PrunerConfig(_Strict):
    """Optuna pruner, fed val_macro_f1 after every epoch."""

    name: str = Field("hyperband", description="hyperband (default), median or none.")
    min_resource: int = Field(
        3,
        ge=1,
        description="hyperband: epochs before a trial can be pruned. Scores of from-scratch CNNs stay near "
        "chance for many epochs on real photos: keep this past the LR warm-up.",
    )
    max_resource: int | None = Field(None, ge=1, description="hyperband: epochs of a full trial (unset: the trial's epochs).")
    reduction_factor: int = Field(3, ge=2, description="hyperband: 1/reduction_factor of trials survive each rung.")
    n_startup_trials: int = Field(3, ge=0, description="median: trials that are never pruned.")
    n_warmup_steps: int = Field(3, ge=0, description="median: epochs before a trial can be pruned.")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, PRUNERS, "pruner")


class HeartbeatConfig(_Strict):
    """Dead-worker detection: a RUNNING trial without a heartbeat for grace_s is failed and retried."""

    interval_s: int = Field(30, ge=1, description="Seconds between heartbeats of a running trial.")
    grace_s: int = Field(120, ge=2, description="Seconds without heartbeat after which a trial counts as dead.")
    max_retry: int = Field(2, ge=0, description="Retries of a trial whose worker died.")

    @model_validator(mode="after")
    def _grace_longer(self) -> HeartbeatConfig:
        if self.grace_s <= self.interval_s:
            raise ValueError("grace_s must be longer than interval_s")
        return self


class ParamSpec(_Strict):
    """One searched parameter: ``choices``, or ``low``/``high`` (with optional ``log``/``step``)."""

    choices: list[Any] | None = Field(None, min_length=1, description="Categorical values.")
    low: float | None = Field(None, description="Lower bound (int when low, high and step are ints).")
    high: float | None = Field(None, description="Upper bound, inclusive.")
    log: bool = Field(False, description="Sample on a log scale (low > 0).")
    step: float | None = Field(None, gt=0, description="Discretisation step.")
    when: dict[str, list[Any]] | None = Field(
        None, description="Only sample when earlier params have one of these values, e.g. {architecture: [cnn]}."
    )

    @model_validator(mode="before")
    @classmethod
    def _keep_ints(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # Remember whether bounds were written as integers before pydantic makes them floats.
            ints = all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) for k in ("low", "high"))
            ints = ints and (data.get("step") is None or isinstance(data.get("step"), int))
            data = {**data, "__ints__": ints} if "low" in data or "high" in data else data
        return data

    is_int: bool = Field(False, alias="__ints__", exclude=True, description="(derived) bounds are integers.")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None and ranged:
            raise ValueError("give either choices or low/high, not both")
        if self.choices is None and not ranged:
            raise ValueError("give choices or low/high")
        if ranged:
            if self.low is None or self.high is None:
                raise ValueError("low and high go together")
            if self.low > self.high:
                raise ValueError(f"low > high ({self.low:g} > {self.high:g})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be combined")
        elif self.log or self.step is not None:
            raise ValueError("log/step apply to low/high ranges, not choices")
        return self

    def values_to_check(self) -> list[Any]:
        """Values that must be valid settings (every choice, both bounds)."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.is_int else float
        return [cast(self.low), cast(self.high)]


class ContinueConfig(_Strict):
    """The end of a budgeted sweep: train the best trials further instead of starting new ones."""

    budget_fraction: float = Field(
        0.35,
        gt=0.0,
        lt=1.0,
        description="With --budget: once this fraction of the budget is left, no new trial starts; the best "
        "trial's model trains on from its best epoch's weights (then the next best, while time is left).",
    )
    lr_scale: float = Field(
        0.5, gt=0.0, le=1.0, description="Peak learning rate of a continuation, as a fraction of the trial's lr_max."
    )


class SweepConfig(_Strict):
    """A search space file (``sweeps/*.yaml``)."""

    experiment: str | None = Field(None, description="Experiment to sweep when -e is not given.")
    trials: int = Field(20, ge=1, description="Total trials (finished + pruned) the study should reach.")
    timeout_min: float | None = Field(None, gt=0, description="Stop starting new trials after this many minutes.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Optuna sampler.")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig, description="Optuna pruner.")
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig, description="Dead-worker detection.")
    params: dict[str, ParamSpec] = Field(min_length=1, description="Searched settings (experiment keys, dotted for nested).")
    fixed: dict[str, Any] = Field({}, description="Settings held fixed for every trial (experiment keys).")
    enqueue: list[dict[str, Any]] = Field(
        [], description="Configurations to try first (e.g. the seed's hand-picked one), as param values."
    )
    continue_best: ContinueConfig | None = Field(
        None,
        description="With --budget: spend the end of the budget training the best trials further (from their "
        "best epoch's weights, a fresh schedule at a lower peak) instead of starting new trials. Unset: off.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepConfig:
        names = list(self.params)
        overlap = sorted(set(names) & set(self.fixed))
        if overlap:
            raise ValueError(f"{overlap[0]!r} is both searched (params) and fixed")
        for index, name in enumerate(names):
            spec = self.params[name]
            for cond in spec.when or {}:
                if cond not in names[:index] and cond not in self.fixed:
                    raise ValueError(f"params.{name}.when: {cond!r} must be a param listed before {name!r}")
        if self.sampler.name == "grid":
            ranged = [n for n, p in self.params.items() if p.choices is None]
            if ranged:
                raise ValueError(f"grid sampler needs choices for every param; {ranged[0]!r} has low/high")
        for i, entry in enumerate(self.enqueue):
            unknown = sorted(set(entry) - set(names))
            if unknown:
                raise ValueError(f"enqueue.{i}: {unknown[0]!r} is not a searched param; allowed: {', '.join(names)}")
            for key, value in entry.items():
                choices = self.params[key].choices
                if choices is not None and not any(_same_choice(value, c) for c in choices):
                    # Optuna fails such a trial ("not in choices") instead of rejecting the file.
                    raise ValueError(f"enqueue.{i}.{key}: {_shown(value)} is not one of the choices; allowed: {_shown(choices)}")
        return self


def _same_choice(value: Any, choice: Any) -> bool:
    """Optuna's categorical equality (16 == 16.0), but "16" is not 16 and True is not 1."""
    return value == choice and isinstance(value, bool) == isinstance(choice, bool)


# Settings that say which data an experiment reads, not how a trial trains: never searched or
# fixed by a sweep file; `sweep --set` applies them to the experiment itself.
DATA_KEYS = ("name", "data_dir", "generate", "classes", "classes_file", "extra_data", "cache_dir")


def load_sweep(
    path: str | os.PathLike, experiment: ExperimentConfig | None = None, fixed: dict[str, Any] | None = None
) -> SweepConfig:
    """Read and validate a sweep file; with ``experiment``, also check that every searched or
    fixed key and value is a valid setting of it (so trial 17 cannot fail on a typo).

    ``fixed`` (from :func:`sweep_overrides`) is applied over the file's ``fixed`` first.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with at least 'params'")
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, model=SweepConfig)) from None
    if fixed:
        sweep = sweep.model_copy(update={"fixed": {**sweep.fixed, **fixed}})
    if experiment is not None:
        for key, value in sweep.fixed.items():
            _check_setting(experiment, key, value, path, f"fixed.{key}")
        base = apply_values(experiment, sweep.fixed, path, "fixed") if sweep.fixed else experiment
        for name, spec in sweep.params.items():
            _check_range_type(name, spec, path)
            for value in spec.values_to_check():
                _check_setting(base, name, value, path, f"params.{name}")
        for i, entry in enumerate(sweep.enqueue):
            for key, value in entry.items():
                _check_setting(base, key, value, path, f"enqueue.{i}.{key}")
        _check_backbone_combinations(sweep, base, path)
    return sweep


def _check_backbone_combinations(sweep: SweepConfig, base: ExperimentConfig, path: Path) -> None:
    """Refuse a sweep that can give a trial transfer-learning settings for an architecture
    without a backbone (:func:`backbone_conflict`): that trial would stop the sweep. Each
    architecture a trial can get is paired with every value each setting can take with it (a
    searched one only where its ``when`` lets it be sampled with that architecture); ``base`` is
    the experiment with the file's ``fixed`` applied."""
    searched = sweep.params.get("architecture")
    architectures = list(searched.choices or []) if searched else [base.architecture]
    if searched is not None and searched.when:
        architectures.append(base.architecture)  # not sampled when its condition fails
    for architecture in architectures:
        for key in BACKBONE_SETTINGS:
            spec = sweep.params.get(key)
            sampled = spec is not None and architecture in (spec.when or {}).get("architecture", [architecture])
            values = spec.values_to_check() if sampled else [getattr(base, key)]
            where = f"params.{key}" if sampled else f"fixed.{key}" if key in sweep.fixed else f"{key} (the experiment's)"
            for value in values:
                problem = backbone_conflict(key, value, architecture)
                if problem:
                    hint = "; or sample it only with those: when: {architecture: [...]}" if sampled else ""
                    raise ConfigError(f"{path}: {where}: {problem}{hint}")
    for i, entry in enumerate(sweep.enqueue):
        architecture = entry.get("architecture", base.architecture)
        for key in BACKBONE_SETTINGS:
            problem = backbone_conflict(key, entry.get(key, getattr(base, key)), architecture)
            if problem:
                raise ConfigError(f"{path}: enqueue.{i}.{key}: {problem}")


def sweep_overrides(
    exp: ExperimentConfig, overrides: Sequence[str], params: dict[str, ParamSpec], sweep_path: Path | str
) -> dict[str, Any]:
    """A sweep's ``--set KEY=VALUE`` as fixed settings over its file's ``fixed``.

    ``exp`` already has the overrides applied (:func:`load_experiment` parsed and validated them
    exactly as for ``train --set``); this reads their typed values back from it. Data keys
    (:data:`DATA_KEYS`) stay on the experiment only. A key the sweep searches is refused: a fixed
    value would silently replace the search of that parameter.
    """
    fixed: dict[str, Any] = {}
    for item in overrides:
        key = _override_key(item)
        if key.split(".")[0] in DATA_KEYS:
            continue
        searched = [name for name in params if name == key or name.startswith(key + ".") or key.startswith(name + ".")]
        if searched:
            raise ConfigError(
                f"--set {key}: {sweep_path}: params.{searched[0]} searches it; drop --set {key}, or copy the "
                f"sweep file and move {searched[0]} from params to fixed"
            )
        value: Any = exp
        for part in key.split("."):
            value = getattr(value, part)
        fixed[key] = value.model_dump() if isinstance(value, BaseModel) else value
    return fixed


def apply_values(exp: ExperimentConfig, values: dict[str, Any], path: Path | str, where: str) -> ExperimentConfig:
    """``exp`` with ``{dotted key: value}`` applied (values already typed, e.g. from Optuna)."""
    data = exp.model_dump()
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{path}: {where}.{key}: {'.'.join(parts[: i + 1])} is not a group of settings")
            node = node[part]
        node[parts[-1]] = value
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(Path(str(path)), exc, prefix=where)) from None


def _check_setting(exp: ExperimentConfig, key: str, value: Any, path: Path, where: str) -> None:
    fields = _fields_at(key.split(".")[:-1])
    leaf = key.split(".")[-1]
    if fields is None or leaf not in fields:
        allowed = ", ".join(sorted(fields or _fields_at([]) or []))
        raise ConfigError(f"{path}: {where}: {key!r} is not an experiment setting; allowed: {allowed}")
    if key in DATA_KEYS:
        raise ConfigError(f"{path}: {where}: {key!r} describes the data, not a trial; set it in experiments.yaml")
    _check_type(key, value, path, where)
    try:
        apply_values(exp, {key: value}, path, where)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{path}: {where}: value {_shown(value)} is invalid ({message.split(': ', 1)[-1]})") from None


def _shown(value: Any) -> str:
    """``repr`` cut short: an error line must stay one readable line whatever the value."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 6
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60
_SHORT_REPR.maxlevel = 2


def _setting_type(key: str) -> Any:
    """The annotation of the experiment setting ``key`` (dotted; known to exist)."""
    *group, leaf = key.split(".")
    model: Any = ExperimentConfig
    for part in group:
        model = _inner_model(model.model_fields[part].annotation)
    return model.model_fields[leaf].annotation


def _accepts(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def _check_type(key: str, value: Any, path: Path, where: str) -> None:
    """Refuse a sweep value of the wrong type even where pydantic would coerce it: Optuna
    compares values as written, so ``"16"`` never matches ``choices: [8, 16]``."""
    annotation = _setting_type(key)
    if isinstance(value, dict) and _inner_model(annotation) is not None:
        return  # a whole group of settings: apply_values validates its members
    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError as exc:
        allowed = exc.errors()[0]["msg"].removeprefix("Input should be ").removeprefix("a valid ")
        raise ConfigError(f"{path}: {where}: {_shown(value)} has the wrong type for {key!r}; allowed: {allowed}") from None


def _check_range_type(name: str, spec: ParamSpec, path: Path) -> None:
    """An integer setting needs integer bounds: with one float bound Optuna samples floats
    (``epochs`` 1.37) and every trial fails. A float setting with whole-number bounds samples
    floats (Optuna would otherwise draw only the whole numbers between them)."""
    fields = _fields_at(name.split(".")[:-1])
    if spec.choices is not None or fields is None or name.split(".")[-1] not in fields:
        return  # choices are checked one by one; an unknown key is reported by _check_setting
    annotation = _setting_type(name)
    if spec.is_int:
        # Whole-number bounds of a float setting (dropout: {low: 0, high: 1}) mean the range,
        # not its two ends: sample floats.
        if _accepts(annotation, 1.5):
            spec.is_int = False
        return
    if _accepts(annotation, 1) and not _accepts(annotation, 1.5):
        raise ConfigError(
            f"{path}: params.{name}: {name!r} is an integer setting; allowed: integer low, high and step "
            f"(e.g. low: {math.floor(spec.low)}, high: {math.ceil(spec.high)})"
        )


# --------------------------------------------------------------------------- loading


def find_config(path: str | os.PathLike | None = None) -> Path:
    """The config file to use: ``path``, else ``./experiments.yaml``, else the packaged default."""
    if path is not None:
        candidate = Path(path)
        if candidate.is_dir():
            candidate = candidate / CONFIG_FILE
        if not candidate.is_file():
            raise ConfigError(f"{path}: config file not found")
        return candidate.resolve()
    local = Path.cwd() / CONFIG_FILE
    if local.is_file():
        return local
    if os.path.lexists(local):
        # A dangling or looping symlink (or a folder) is the user's config gone wrong; falling
        # back to the packaged demo config would silently sweep the wrong experiment.
        what = f"a symlink to {os.readlink(local)} that cannot be followed" if local.is_symlink() else "not a file"
        raise ConfigError(f"{local}: {what}; fix it, remove it, or pass --config PATH")
    return _packaged_config()


# Study names end up in shell commands, export folder names and MLflow filter strings.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
STUDY_NAME_ALLOWED = "letters, digits, '.', '_' and '-', not starting with '.', at most 100 characters"


def check_study_name(name: str, source: str = "--study") -> str:
    """``name`` if it is a safe study name, else a one-line :class:`ConfigError` naming ``source``."""
    if not STUDY_NAME.fullmatch(name):
        raise ConfigError(f"{source} {name!r}: not a valid study name; allowed: {STUDY_NAME_ALLOWED}")
    return name


def project_dir(config_path: Path) -> Path:
    """Folder relative paths resolve against: the config's folder, or CWD for the packaged default."""
    if _is_packaged(config_path):
        return Path.cwd()
    return config_path.parent


def load_file(path: str | os.PathLike | None = None) -> tuple[Path, ExperimentsFile]:
    """Read and validate the whole experiments file."""
    config_path = find_config(path)
    data = read_yaml(config_path)
    if data is None:
        raise ConfigError(f"{config_path}: empty file; expected a mapping with key 'experiments'")
    if isinstance(data, dict):
        for name, exp in (data.get("experiments") or {}).items():
            if isinstance(exp, dict):
                exp.setdefault("name", name)
    try:
        parsed = ExperimentsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(config_path, exc)) from None
    return config_path, parsed


def experiment_settings(name: str | None = None, config: str | os.PathLike | None = None) -> tuple[Path, str, ExperimentConfig]:
    """The config file, name and settings of experiment ``name`` (the file's ``default`` when
    None) as written, without resolving its data (for commands that need a setting, not the data)."""
    config_path, parsed = load_file(config)
    if name is None:
        name = parsed.default or next(iter(parsed.experiments), None)
        if name not in parsed.experiments:
            raise ConfigError(
                f"{config_path}: default: {name!r} is not an experiment; allowed: {', '.join(parsed.experiments) or '(none defined)'}"
            )
    if name not in parsed.experiments:
        raise ConfigError(f"{config_path}: experiments.{name}: unknown experiment; allowed: {', '.join(parsed.experiments)}")
    return config_path, name, parsed.experiments[name]


def load_experiment(
    name: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ResolvedExperiment:
    """Load, override and resolve one experiment.

    ``overrides`` are ``key=value`` strings (dotted keys for nested fields, values parsed as
    YAML), as given with ``--set``.
    """
    config_path, name, exp = experiment_settings(name, config)
    if overrides:
        declared = exp
        exp = apply_overrides(exp, overrides, config_path, prefix=f"experiments.{name}")
        exp = _generated_only_where_declared(declared, exp, overrides, project_dir(config_path))
    return resolve(exp, config_path, os.environ if env is None else env)


def _generated_only_where_declared(
    declared: ExperimentConfig, exp: ExperimentConfig, overrides: list[str], base: Path
) -> ExperimentConfig:
    """A ``generate:`` recipe belongs to the folder the file declares it for. ``--set
    data_dir=X`` on a generated experiment reads X as existing data: a mistyped path must not
    fill up with synthetic images, nor a real dataset trip over the demo recipe check. Only
    ``--set generate...`` in the same command declares a recipe for X."""
    keys = {_override_key(item).split(".")[0] for item in overrides}
    moved = exp.data_dir != declared.data_dir and (
        exp.data_dir is None or declared.data_dir is None or _abs(exp.data_dir, base) != _abs(declared.data_dir, base)
    )
    if exp.generate is not None and moved and "generate" not in keys:
        return exp.model_copy(update={"generate": None})
    return exp


def _override_key(item: str) -> str:
    """The key of a ``key=value`` override (as :func:`apply_overrides` reads it)."""
    return item.partition("=")[0].strip()


def apply_overrides(exp: ExperimentConfig, overrides: list[str], config_path: Path | str, prefix: str = "") -> ExperimentConfig:
    """Return ``exp`` with ``key=value`` overrides applied and re-validated."""
    data = exp.model_dump()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set image_size=224)")
        try:
            value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
        except ConfigError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            model_fields = _fields_at(parts[:i])
            if model_fields is not None and part not in model_fields:
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {where}: unknown key; allowed: {', '.join(sorted(model_fields))}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(Path(str(config_path)), exc, prefix=prefix, via="--set")) from None


def resolve(exp: ExperimentConfig, config_path: Path, env: Any) -> ResolvedExperiment:
    """Make paths absolute, apply ``$GCS_DS_PATH``, check local data exists, load class names."""
    base = project_dir(config_path)
    where = f"{config_path}: experiments.{exp.name}"
    raw_dir = exp.data_dir or env.get(DATA_DIR_ENV)
    if not raw_dir:
        raise ConfigError(
            f"{where}.data_dir: not set; set data_dir in the file or export {DATA_DIR_ENV}=<local folder or gs:// URL>"
        )
    data_dir = _abs(raw_dir, base)
    if exp.generate is None and not _is_url(data_dir) and not Path(data_dir).is_dir():
        raise ConfigError(
            f"{where}.data_dir: {data_dir} does not exist (experiment {exp.name!r} reads a dataset folder with "
            "tfrecords-jpeg-SxS/; make one with: flower-exp data import-folder PHOTOS --experiment NAME)"
        )
    extra = []
    for i, src in enumerate(exp.extra_data):
        path = _abs(src.path, base)
        if not _is_url(path) and not Path(path).is_dir():
            raise ConfigError(f"{where}.extra_data.{i}.path: {path} does not exist")
        extra.append(src.model_copy(update={"path": path}))
    return ResolvedExperiment(
        config=exp,
        config_path=str(config_path),
        data_dir=data_dir,
        class_names=_class_names(exp, base, data_dir, where),
        cache_dir=_abs(exp.cache_dir, base),
        extra_data=extra,
    )


def builtin_classes(name: str) -> list[str]:
    """Class names shipped with the package (e.g. ``petals``: the competition's 104)."""
    if name not in BUILTIN_CLASSES:
        raise ConfigError(f"unknown builtin class list {name!r}; allowed: {', '.join(BUILTIN_CLASSES)}")
    text = (resources.files("flower_exp") / "resources" / BUILTIN_CLASSES[name]).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_yaml(path: Path) -> Any:
    """Read a user's YAML file with the guarded loader (:func:`flower_exp.yaml_io.load_yaml`),
    turning every problem into a one-line :class:`ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    return load_yaml(text, str(path))


def format_validation_error(
    path: Path, exc: ValidationError, prefix: str = "", via: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line for the first pydantic error: file, dotted key, what is wrong and what is allowed."""
    # An unknown key is usually the typo behind the other errors (e.g. a "missing" one).
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix] + loc if prefix else loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_for_loc(err["loc"], top=not prefix, model=model)
        message = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    else:
        message = err["msg"]
        if (
            err["type"] not in ("value_error", "assertion_error")
            and "input" in err
            and not isinstance(err["input"], (dict, list))
        ):
            message += f" (got {err['input']!r})"
        message = message.removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    source = f"{via} " if via else ""
    if not loc and err["type"] == "value_error":  # whole-file checks name their keys themselves
        return f"{path}: {source}{message}{more}"
    return f"{path}: {source}{key}: {message}{more}"


def describe_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` of every user setting, nested models flattened."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows


# --------------------------------------------------------------------------- writing experiments.yaml

# Experiment names end up in study names (<experiment>-<sweep>), MLflow experiment names,
# export folders and the shell commands flower-exp prints.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,59}")
EXPERIMENT_NAME_ALLOWED = "letters, digits, '_' and '-', not starting with '-', at most 60 characters"
# The comment line above a written experiment; a replacement (--force) replaces it too.
_MARKER = "{name}: written by "


def writable_config(config: str | os.PathLike | None) -> Path:
    """The ``experiments.yaml`` a command that adds an experiment writes: ``config`` (a file, or
    a folder holding one), else ``./experiments.yaml``; it may not exist yet. Never the packaged
    copy: it belongs to the installation, and edits there would vanish with the next install."""
    path = Path(config) if config is not None else Path.cwd() / CONFIG_FILE
    if path.is_dir():
        path = path / CONFIG_FILE
    if os.path.lexists(path) and not path.is_file():
        what = f"a symlink to {os.readlink(path)} that cannot be followed" if path.is_symlink() else "not a file"
        raise ConfigError(f"{path}: {what}; fix it, remove it, or pass --config PATH")
    if _is_packaged(path):
        raise ConfigError(
            f"{path}: the packaged experiments.yaml is never edited; run from your project folder or pass --config PATH"
        )
    return path.absolute()


def check_new_experiment(path: Path, name: str, force: bool = False) -> None:
    """Refuse, before anything is written, an invalid experiment name, a name ``path`` already
    holds (unless ``force``) and a file that :func:`add_experiment` could not extend."""
    if not EXPERIMENT_NAME.fullmatch(name):
        raise ConfigError(f"--experiment {name!r}: not a valid experiment name; allowed: {EXPERIMENT_NAME_ALLOWED}")
    base = _base_file(path)
    _, parsed = load_file(base)
    if name in parsed.experiments and not force:
        inherited = "" if base == path else " (in the packaged experiments.yaml this new file starts as a copy of)"
        raise ConfigError(
            f"{path}: experiments.{name}: already exists{inherited}; choose another --experiment name or add --force "
            "to replace it"
        )
    _experiment_slot(path, base.read_text(encoding="utf-8"), name)


def add_experiment(path: Path, name: str, settings: dict[str, Any], written_by: str, *, force: bool = False) -> None:
    """Add experiment ``name`` (``settings``) to the experiments file ``path``, or replace it
    with ``force``, under a comment line saying it was written by ``written_by`` and when.

    Every other line stays as the user wrote it, comments included: the new block is inserted
    as text at the end of the ``experiments:`` mapping (or where the replaced one was). A file
    that does not exist starts as a copy of the packaged one, so ``demo`` and ``petals`` stay
    available from this folder. The result is re-read and validated before it is renamed into
    place over the old file (never half written).
    """
    check_new_experiment(path, name, force)
    exists = path.exists()
    text = _base_file(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    start, end, indent = _experiment_slot(path, text, name)
    lines = text.splitlines(keepends=True)
    # A new block is set off by a blank line; a replaced one keeps the spacing around it.
    block = "\n" if start == end and start > 0 and lines[start - 1].strip() else ""
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    block += " " * indent + "# " + " ".join(f"{_MARKER.format(name=name)}{written_by} on {stamp}".split()) + "\n"
    dumped = yaml_dump({name: settings})
    block += "".join(" " * indent + line for line in dumped.splitlines(keepends=True))
    new_text = "".join(lines[:start]) + block + "".join(lines[end:])

    # The text edit must have changed exactly this one experiment.
    before = load_yaml(text, str(path))
    after = load_yaml(new_text, str(path))
    before["experiments"].pop(name, None)
    added = after["experiments"].pop(name, None)
    if added != settings or after != before:
        raise ConfigError(f"{path}: cannot add experiment {name!r} without rewriting the file; add it by hand under experiments:")
    try:  # the rest of the file was validated by check_new_experiment and is unchanged
        ExperimentConfig.model_validate({**settings, "name": name})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, prefix=f"experiments.{name}")) from None
    _replace_file(path, new_text, exists)


def yaml_dump(data: Any) -> str:
    """Block-style YAML in insertion order, as flower-exp writes it for users to read."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def _experiment_slot(path: Path, text: str, name: str) -> tuple[int, int, int]:
    """``(first line, end line, indent)`` of where experiment ``name`` goes in ``text``: the lines
    of its current block (leading marker comment included) to replace, or an empty range at the
    end of the ``experiments:`` mapping; and the indentation of its keys."""
    lines = text.splitlines(keepends=True)
    # The text already passed the guarded loader (load_file); composing again only for positions.
    root = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    experiments = None
    if isinstance(root, yaml.MappingNode):
        experiments = next((v for k, v in root.value if k.value == "experiments"), None)
    if not isinstance(experiments, yaml.MappingNode) or experiments.flow_style:
        raise ConfigError(
            f"{path}: experiments: written in flow style ({{...}}); {name!r} can only be added to an indented "
            "block of experiments; rewrite it in block style (one key per line)"
        )
    indent = experiments.value[0][0].start_mark.column  # a block mapping has at least one key

    def end_line(mark) -> int:
        # A block ends where the next token starts (a following key, or the end of the file);
        # a flow value or a scalar ends on its own line.
        at_line_start = mark.line < len(lines) and not lines[mark.line][: mark.column].strip()
        return mark.line if at_line_start or mark.line >= len(lines) else mark.line + 1

    def back_over_comments(stop: int, floor: int) -> int:
        # Comments and blank lines before the next key belong to it, not to this block.
        while stop > floor and (not lines[stop - 1].strip() or lines[stop - 1].lstrip().startswith("#")):
            stop -= 1
        return stop

    for key, value in experiments.value:
        if key.value == name:
            start = key.start_mark.line
            if start > 0 and lines[start - 1].strip().startswith("# " + _MARKER.format(name=name)):
                start -= 1
            return start, back_over_comments(end_line(value.end_mark), key.start_mark.line + 1), indent
    at = back_over_comments(end_line(experiments.end_mark), experiments.value[-1][0].start_mark.line + 1)
    return at, at, indent


def _packaged_config() -> Path:
    return Path(str(resources.files("flower_exp") / "resources" / CONFIG_FILE))


def _base_file(path: Path) -> Path:
    """What a new experiment is added to: ``path``, or the packaged file it starts as a copy of."""
    return path if path.exists() else _packaged_config()


def _replace_file(path: Path, text: str, exists: bool) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if exists:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- helpers


def _fields_at(parts: list[str]) -> set[str] | None:
    model: Any = ExperimentConfig
    for part in parts:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return set(model.model_fields)


def _fields_for_loc(loc: tuple, top: bool, model: type[BaseModel] | None = None) -> list[str]:
    """Allowed keys at the parent of ``loc`` (walking nested models; list indexes skipped)."""
    parts = list(loc[:-1])
    if model is not None:
        current: Any = model
        for part in parts:
            if isinstance(part, int):
                continue
            field = current.model_fields.get(part) if isinstance(current, type) else None
            if field is None:  # a key of a dict[str, Model]: the model stays the same
                continue
            inner = _inner_model(field.annotation)
            if inner is None:
                return []
            current = inner
        return [n for n, f in current.model_fields.items() if not f.exclude]
    if top:
        if not parts:
            return list(ExperimentsFile.model_fields)
        if parts[0] != "experiments" or len(parts) < 2:
            return []
        parts = parts[2:]
    model: Any = ExperimentConfig
    for part in parts:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields)


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _class_names(exp: ExperimentConfig, base: Path, data_dir: str, where: str) -> list[str] | None:
    if exp.classes is not None:
        return list(exp.classes)
    if exp.classes_file and exp.classes_file.startswith(BUILTIN_PREFIX):
        name = exp.classes_file[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_CLASSES:
            raise ConfigError(
                f"{where}.classes_file: unknown builtin {exp.classes_file!r}; allowed: "
                f"{', '.join(BUILTIN_PREFIX + k for k in BUILTIN_CLASSES)}"
            )
        return builtin_classes(name)
    if exp.classes_file:
        path = Path(_abs(exp.classes_file, base))
        if not path.is_file():
            raise ConfigError(f"{where}.classes_file: {path} does not exist")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"{where}.classes_file: {path} has no class names")
        return names
    # <data_dir>/classes.txt, read when the data is opened (it may be generated or remote).
    return None


def _abs(path: str, base: Path) -> str:
    if _is_url(path):
        return path
    expanded = Path(os.path.expanduser(os.path.expandvars(path)))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _is_url(path: str) -> bool:
    return "://" in path


def _is_packaged(config_path: Path) -> bool:
    packaged = Path(str(resources.files("flower_exp") / "resources"))
    try:
        return config_path.resolve().parent == packaged.resolve()
    except OSError:
        return False
