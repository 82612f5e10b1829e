"""The export format (docs/architecture.md, "Export format"): what ``flower-exp best --export``
writes and every reader checks, in one place, so writer (:mod:`flower_exp.export`) and readers
(:mod:`flower_exp.predictor`, the MLflow pyfunc) share one definition.

An export is a folder with ``ensemble.json`` (schema :class:`EnsembleFile`, read strictly:
no NaN, no duplicate or unknown keys) and ``members/<run_id>.keras``. :func:`load_export`
trusts nothing in it: member paths must stay inside the folder, and models load through
:func:`flower_exp.models.load_model` (``safe_mode=True``: no pickled Python code, a ``Lambda``
layer is refused). Nothing from the export is executed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._imports import tensorflow
from .errors import FlowerExpError

FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
WEIGHT_TOLERANCE = 1e-6
# A run id becomes a file name (members/<run_id>.keras): letters, digits, '-', '_' and '.'.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------- format


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MemberEntry(_Strict):
    """One member of ``ensemble.json``."""

    run_id: str = Field(pattern=RUN_ID_RE.pattern)
    architecture: str = Field(min_length=1)
    image_size: int = Field(gt=0)
    normalization: Literal["raw", "unit", "tf", "torch"]
    weight: float = Field(ge=0.0, allow_inf_nan=False)
    path: str = Field(min_length=1)
    scores: dict[str, float | None] = Field(default_factory=dict)


class EnsembleFile(_Strict):
    """The schema of ``ensemble.json`` (format 1).

    The first block is the format itself; the optional block holds what ``flower-exp best``
    records about where the ensemble came from (``info`` of :func:`flower_exp.export.write_export`).
    Unknown keys are refused, so a typo or a newer format cannot be half-understood.
    """

    format_version: Literal[1]
    class_names: list[str] = Field(min_length=1)
    members: list[MemberEntry] = Field(min_length=1)
    versions: dict[str, str]
    created: str

    experiment: str | None = None
    study: str | None = None
    method: str | None = None
    metric: str | None = None
    ensemble_run_id: str | None = None
    selected_runs: list[str] | None = None
    refit_of: dict[str, str] | None = None
    holdout: dict[str, float | bool | None] | None = None
    notes: str | None = None


INFO_KEYS = tuple(
    k for k in EnsembleFile.model_fields if k not in ("format_version", "class_names", "members", "versions", "created")
)


def check_document(doc: dict[str, Any], where: str) -> EnsembleFile:
    """Validate an ``ensemble.json`` document (already parsed) beyond JSON syntax; ``where``
    names the file in the one-line error."""
    if not isinstance(doc, dict):
        raise FlowerExpError(f"{where}: expected a JSON object at the top level")
    if "format_version" not in doc:
        raise FlowerExpError(f"{where}: format_version is missing; not a flower-exp export")
    version = doc["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise FlowerExpError(
            f"{where}: unsupported format_version {version!r} (this flower-exp reads {FORMAT_VERSION}); "
            "upgrade flower-exp or re-export"
        )
    try:
        parsed = EnsembleFile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise FlowerExpError(f"{where}: {loc}: {err['msg']}") from None
    names = parsed.class_names
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise FlowerExpError(f"{where}: class_names must be unique, non-empty names")
    run_ids = [m.run_id for m in parsed.members]
    if len(set(run_ids)) != len(run_ids):
        raise FlowerExpError(f"{where}: members: run ids must be unique")
    check_weights([m.weight for m in parsed.members], where)
    return parsed


def check_weights(weights: Sequence[float], where: str) -> None:
    """Member weights must be finite, non-negative and sum to 1."""
    if not weights:
        raise FlowerExpError(f"{where}: an ensemble needs at least one member")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise FlowerExpError(f"{where}: weight {w!r} is invalid; weights must be finite and >= 0")
    total = float(sum(weights))
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise FlowerExpError(f"{where}: weights sum to {total:.6g}; they must sum to 1")


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedMember:
    """One member model, ready to predict."""

    run_id: str
    architecture: str
    image_size: int
    normalization: str
    weight: float
    model: Any  # keras.Model
    path: str
    _step: Any = field(default=None, repr=False, compare=False)

    def probabilities(self, images: Any, tta: bool = False) -> np.ndarray:
        """``float64 [B, C]`` for a batch of 0..255 pixels ``[B, S, S, 3]`` (array or tensor),
        normalized the member's way; ``tta`` averages with the left-right flip."""
        from .data.pipeline import normalize

        tf = tensorflow()
        x = normalize(tf.convert_to_tensor(images), self.normalization)
        return self.predict_normalized(x, tta)

    def predict_normalized(self, x: Any, tta: bool = False) -> np.ndarray:
        """Like :meth:`probabilities` for an already normalized batch."""
        tf = tensorflow()
        if self._step is None:
            # Traced once per member with an open batch dimension, so a smaller last batch does
            # not retrace (model.predict_on_batch would). A partial, unlike a lambda, gives each
            # member its own key in TensorFlow's "frequent retracing" warning counter.
            spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
            self._step = tf.function(functools.partial(self.model, training=False), input_signature=[spec])
        probs = np.asarray(self._step(x), np.float64)
        if tta:
            probs = (probs + np.asarray(self._step(tf.reverse(x, axis=[2])), np.float64)) / 2.0
        return probs


@dataclass
class LoadedEnsemble:
    """An export in memory: class names, members with their models, and ``ensemble.json``."""

    root: str
    class_names: list[str]
    members: list[LoadedMember]
    info: dict[str, Any]  # the whole ensemble.json document

    @property
    def image_sizes(self) -> list[int]:
        """Distinct member image sizes, ascending."""
        return sorted({m.image_size for m in self.members})


def load_export(path: str) -> LoadedEnsemble:
    """Load and check an export folder; every problem is a one-line :class:`FlowerExpError`
    naming the file."""
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise FlowerExpError(f"{path}: {what}; expected an export folder written by flower-exp best --export")
    json_path = os.path.join(root, ENSEMBLE_FILE)
    if not os.path.isfile(json_path):
        raise FlowerExpError(f"{json_path}: missing; {path} is not a flower-exp export (write one with flower-exp best --export)")
    doc = read_json_strict(json_path)
    parsed = check_document(doc, json_path)
    real_root = os.path.realpath(root)
    members = []
    for entry in parsed.members:
        file = _member_file(real_root, entry.path, json_path)
        model = _load_member_model(file)
        _check_model_shape(model, entry, len(parsed.class_names), file)
        members.append(
            LoadedMember(
                entry.run_id, entry.architecture, entry.image_size, entry.normalization, float(entry.weight), model, file
            )
        )
    return LoadedEnsemble(root=root, class_names=list(parsed.class_names), members=members, info=doc)


def read_json_strict(path: str) -> Any:
    """Parse a JSON file strictly: no NaN/Infinity, no duplicate keys; one-line errors."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowerExpError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise FlowerExpError(f"{path}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:
        raise FlowerExpError(f"{path}: malformed JSON ({exc})") from None


def load_export_document(export_dir: str) -> dict[str, Any]:
    """The checked ``ensemble.json`` of an export, without loading its models."""
    path = os.path.join(export_dir, ENSEMBLE_FILE)
    doc = read_json_strict(path)
    check_document(doc, path)
    return doc


def _member_file(real_root: str, rel: str, json_path: str) -> str:
    """The member's file, which must be a relative path that stays inside the export."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise FlowerExpError(f"{json_path}: member path {rel!r} is absolute; it must be relative to the export folder")
    if ".." in re.split(r"[\\/]", rel):
        raise FlowerExpError(f"{json_path}: member path {rel!r} leaves the export folder")
    # realpath also resolves symlinks: a link inside the export pointing elsewhere is refused.
    full = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([full, real_root]) != real_root:
        raise FlowerExpError(f"{json_path}: member path {rel!r} resolves outside the export folder (symlink?)")
    if not os.path.isfile(full):
        raise FlowerExpError(f"{json_path}: member file {rel} is missing from the export")
    return full


def _load_member_model(file: str) -> Any:
    from . import models

    # Keras reports a truncated archive as "File not found", which sends users looking for the
    # file instead of replacing it.
    if not zipfile.is_zipfile(file):
        raise FlowerExpError(f"{file}: not a readable .keras file (truncated or not a zip archive); export it again")
    try:
        return models.load_model(file)
    except FlowerExpError:
        raise
    except Exception as exc:  # a truncated or foreign file raises zipfile/OSError/KeyError/...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FlowerExpError(f"{file}: cannot load model ({first})") from None


def _check_model_shape(model: Any, entry: MemberEntry, num_classes: int, file: str) -> None:
    outputs = model.outputs
    inputs = model.inputs
    if len(outputs) != 1 or len(inputs) != 1:
        raise FlowerExpError(f"{file}: expected one image input and one probability output")
    classes = outputs[0].shape[-1]
    if classes != num_classes:
        raise FlowerExpError(f"{file}: model outputs {classes} classes but ensemble.json lists {num_classes} class names")
    shape = tuple(inputs[0].shape[1:])
    if shape[:2] not in ((entry.image_size, entry.image_size), (None, None)):
        raise FlowerExpError(f"{file}: model input is {shape} but ensemble.json says image_size {entry.image_size}")
