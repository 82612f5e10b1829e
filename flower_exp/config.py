"""Typed configuration: ``experiments.yaml``.

Every setting a user may change is a typed field with a default and a description, and a
bad file fails up front with one line naming the file, the key and what is allowed.
``experiments.yaml`` is looked up in the current working directory (like git or MLflow do)
unless ``--config PATH`` is given; without one, the copy shipped in the package is used so
``flower-exp`` works from an empty folder too.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONFIG_FILE = "experiments.yaml"
DATA_DIR_ENV = "GCS_DS_PATH"
BUILTIN_CLASSES = {"petals": "petals-classes.txt"}
BUILTIN_PREFIX = "builtin:"

PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    contrast: float = Field(
        0.1, ge=0.0, lt=1.0, description="Max relative random contrast change; 0 disables."
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
    generate: DemoSpec | None = Field(
        None, description="If set, data_dir holds a generated demo dataset, created on first use."
    )
    classes: list[str] | None = Field(None, description="Class names, in label order.")
    classes_file: str | None = Field(
        None,
        description="File of class names, one per line (relative to the config file), or "
        f"{', '.join(BUILTIN_PREFIX + k for k in BUILTIN_CLASSES)}. Default: <data_dir>/classes.txt.",
    )
    image_size: PositiveInt = Field(331, description="Square input size; read from tfrecords-jpeg-SxS or resized from the nearest larger size.")
    batch_size_per_replica: PositiveInt = Field(16, description="Batch size per accelerator replica (global = this x replicas).")
    shuffle_buffer: PositiveInt = Field(2048, description="Shuffle buffer of the training pipeline, in records.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentation.")
    extra_data: list[ExtraData] = Field([], description="Extra training sources; refused if they leak into val/test.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig, description="Leakage guard settings.")
    cache_dir: str = Field("mlruns/cache", description="Where derived data (image hashes) is cached, relative to the config file.")
    seed: int = Field(42, description="Seed for shuffling, augmentation and initialisation.")

    # --- one training run (what a sweep varies) ---
    architecture: str = Field("cnn", description="Registered model name (flower-exp models lists them).")
    weights: str = Field("none", description="none, imagenet, noisy-student (efficientnet_ns_*) or a local weights file of the headless network.")
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
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the cross-entropy loss.")
    lr_min: float = Field(1e-4, gt=0, description="LR schedule: floor of the exponential decay (and default ramp start).")
    lr_max: float = Field(8e-4, gt=0, description="LR schedule: peak, held for lr_sustain_epochs (x replicas unless lr_scale_by_replicas is off).")
    lr_start: float | None = Field(None, gt=0, description="LR schedule: first ramp-up value (unset: lr_min).")
    lr_rampup_epochs: int = Field(4, ge=0, description="LR schedule: epochs of linear ramp-up to lr_max.")
    lr_sustain_epochs: int = Field(6, ge=0, description="LR schedule: epochs held at lr_max.")
    lr_decay: float = Field(0.8, gt=0, le=1, description="LR schedule: per-epoch exponential decay factor after the sustain.")
    lr_scale_by_replicas: bool = Field(True, description="Multiply lr_max by the number of replicas (TPU notebooks do).")
    lr_random_rampup: bool = Field(False, description="The seed's variant: random()*lr_min during ramp-up (seeded).")
    strategy: str = Field("auto", description="auto (TPU, else several GPUs, else default), tpu, mirrored, gpu or cpu.")
    mixed_precision: str = Field("auto", description="auto (bfloat16 on TPU, float16 on GPU, off on CPU), off, float16, bfloat16.")
    jit_compile: bool = Field(False, description="XLA-compile the train step.")
    steps_per_execution: PositiveInt = Field(1, description="Batches per compiled call (raise on TPU, e.g. 16-32).")

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        from .models import list_models

        if value not in list_models():
            raise ValueError(f"unknown architecture {value!r}; allowed: {', '.join(list_models())}")
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from .strategy import STRATEGIES

        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; allowed: {', '.join(STRATEGIES)}")
        return value

    @field_validator("mixed_precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from .strategy import PRECISIONS

        if value not in PRECISIONS:
            raise ValueError(f"unknown mixed_precision {value!r}; allowed: {', '.join(PRECISIONS)}")
        return value

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
    return Path(str(resources.files("flower_exp") / "resources" / CONFIG_FILE))


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
    config_path, parsed = load_file(config)
    if name is None:
        name = parsed.default or next(iter(parsed.experiments), None)
        if name not in parsed.experiments:
            raise ConfigError(
                f"{config_path}: default: {name!r} is not an experiment; allowed: {', '.join(parsed.experiments) or '(none defined)'}"
            )
    if name not in parsed.experiments:
        raise ConfigError(
            f"{config_path}: experiments.{name}: unknown experiment; allowed: {', '.join(parsed.experiments)}"
        )
    exp = parsed.experiments[name]
    if overrides:
        exp = apply_overrides(exp, overrides, config_path, prefix=f"experiments.{name}")
    return resolve(exp, config_path, os.environ if env is None else env)


def apply_overrides(
    exp: ExperimentConfig, overrides: list[str], config_path: Path | str, prefix: str = ""
) -> ExperimentConfig:
    """Return ``exp`` with ``key=value`` overrides applied and re-validated."""
    data = exp.model_dump()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set image_size=224)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
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
        raise ConfigError(f"{where}.data_dir: not set; set data_dir in the file or export {DATA_DIR_ENV}=<local folder or gs:// URL>")
    data_dir = _abs(raw_dir, base)
    if exp.generate is None and not _is_url(data_dir) and not Path(data_dir).is_dir():
        raise ConfigError(f"{where}.data_dir: {data_dir} does not exist (expected a folder with tfrecords-jpeg-SxS/)")
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
    """``yaml.safe_load`` a file, turning syntax errors into one-line :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line} malformed YAML ({problem})") from None


def format_validation_error(path: Path, exc: ValidationError, prefix: str = "", via: str = "") -> str:
    """One line for the first pydantic error: file, dotted key, what is wrong and what is allowed."""
    # An unknown key is usually the typo behind the other errors (e.g. a "missing" one).
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix] + loc if prefix else loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_for_loc(err["loc"], top=not prefix)
        message = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    else:
        message = err["msg"]
        if err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
            message += f" (got {err['input']!r})"
        message = message.removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    source = f"{via} " if via else ""
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


def _fields_for_loc(loc: tuple, top: bool) -> list[str]:
    """Allowed keys at the parent of ``loc`` (walking nested models; list indexes skipped)."""
    parts = list(loc[:-1])
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
            raise ConfigError(f"{where}.classes_file: unknown builtin {exp.classes_file!r}; allowed: "
                              f"{', '.join(BUILTIN_PREFIX + k for k in BUILTIN_CLASSES)}")
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
