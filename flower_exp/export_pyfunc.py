"""The MLflow pyfunc of an export folder ("model from code", docs/architecture.md, "Export format").

:func:`save_pyfunc` writes the MLflow files of the folder (MLmodel, ``ensemble_pyfunc.py``,
environments); the code file only calls ``set_model(EnsemblePyfunc(<its own folder>))``, and
:class:`EnsemblePyfunc` loads the folder with :func:`flower_exp.export_format.load_export` and
predicts with the same code as ``flower-exp predict`` (:mod:`flower_exp.predictor`), so
flower-exp and MLflow read the same files. MLflow 3 refuses to unpickle models by default, and
a pickle would be code anyway.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .errors import FlowerExpError
from .export_format import load_export
from .fetch import MAX_BYTES
from .predictor import predict_payloads, read_source

PYFUNC_CODE_FILE = "ensemble_pyfunc.py"
# Exports written before this module existed import EnsemblePyfunc from flower_exp.export,
# which therefore keeps importing it.
_PYFUNC_CODE = '''"""MLflow entry point of a flower-exp export ("model from code"): the model is the folder
holding this file; flower_exp.export_pyfunc.EnsemblePyfunc loads it with flower_exp.export_format.load_export."""

import os

import mlflow

from flower_exp.export_pyfunc import EnsemblePyfunc

mlflow.models.set_model(EnsemblePyfunc(os.path.dirname(os.path.abspath(__file__))))
'''
# mlflow.pyfunc.save_model runs the code file through process-global state (set_model);
# two exports saving at once in one process must not interleave there.
_SAVE_LOCK = threading.Lock()
# The column a REST client sends images in: JSON carries no bytes.
BASE64_COLUMN = "image_base64"
# Set by `mlflow models serve` in the scoring server's environment (mlflow.pyfunc.scoring_server).
_SERVED_ENV = "__pyfunc_model_path__"


def save_pyfunc(path: Path) -> None:
    """Write the MLflow pyfunc files (MLmodel, code file, environments) into ``path``."""
    from . import __version__

    with tempfile.TemporaryDirectory(prefix="flower-exp-pyfunc-") as code_dir:
        code = Path(code_dir) / PYFUNC_CODE_FILE
        code.write_text(_PYFUNC_CODE, encoding="utf-8")
        # Pinned to the writer's versions, so a fresh environment (`mlflow models serve` with a
        # virtualenv) gets the TensorFlow and Keras the members were saved with. Listing them
        # explicitly also skips MLflow's dependency inference, which would load the model.
        requirements = ["flower-exp" if "+" in __version__ else f"flower-exp=={__version__}", *_framework_requirements()]
        mlflow_logger = logging.getLogger("mlflow")
        level = mlflow_logger.level
        # "Failed to infer model signature" is expected: inputs are paths or bytes, by design.
        mlflow_logger.setLevel(logging.ERROR)
        try:
            with _SAVE_LOCK:
                mlflow.pyfunc.save_model(str(path), python_model=str(code), pip_requirements=requirements)
        except mlflow.exceptions.MlflowException as exc:
            # MLflow rewords a full disk while copying the code file as an "invalid code path".
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise
        finally:
            mlflow_logger.setLevel(level)


def _framework_requirements() -> list[str]:
    """The installed TensorFlow distribution (tensorflow, tensorflow-cpu, ...) and Keras, pinned."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for names in (("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"), ("keras",)):
        for name in names:
            try:
                out.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return out


# --------------------------------------------------------------------------- MLflow


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc over an export folder.

    ``predict`` takes a DataFrame with an ``image`` column (or a single column), a Series, or a
    list, holding image bytes or local file paths, or a DataFrame with an ``image_base64``
    column of base64 text (what a REST client of ``mlflow models serve`` sends; a ``data:``
    URL prefix is accepted). It returns one row per image with ``label``, ``label_index``,
    ``probability``, ``error`` (``None`` unless that image failed; its other columns are then
    empty) and one probability column per class. When no image of the input can be read it
    raises an MLflow invalid-parameter error instead (HTTP 400 from the scoring server).

    URLs are not fetched here: a served model that downloads whatever a request names is an
    SSRF hole (``flower-exp predict`` fetches http(s) URLs); for the same reason a served model
    reads no file paths, only the images a request carries.
    """

    def __init__(self, root: str | None = None):
        self.root = root
        self.ensemble = None

    def load_context(self, context: Any) -> None:  # noqa: D102 - MLflow hook
        artifacts = getattr(context, "artifacts", None) or {}
        root = artifacts.get("export") or self.root
        if not root:
            raise FlowerExpError("EnsemblePyfunc: no export folder to load")
        self.ensemble = load_export(root)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: D102
        if self.ensemble is None:
            self.load_context(context)
        if isinstance(model_input, pd.DataFrame) and BASE64_COLUMN in model_input.columns:
            names, payloads = _base64_payloads(list(model_input[BASE64_COLUMN]))
            return self._predict(names, payloads)
        served = _SERVED_ENV in os.environ
        values = _input_values(model_input)
        names, payloads = [], []
        for value in values:
            if isinstance(value, (bytes, bytearray, memoryview)):
                names.append(f"<{len(value)} bytes>")
                payloads.append(bytes(value))
                continue
            if not isinstance(value, str):
                names.append(repr(value)[:80])
                payloads.append(f"unsupported input {type(value).__name__}; pass image bytes or a file path")
                continue
            names.append(value)
            if served:
                payloads.append(f"a served model reads no file paths; send the image as base64 in a column {BASE64_COLUMN!r}")
                continue
            try:
                payloads.append(read_source(value, fetch=_no_fetch))
            except FlowerExpError as exc:
                payloads.append(str(exc))
        return self._predict(names, payloads)

    def _predict(self, names: list[str], payloads: list[bytes | str]) -> pd.DataFrame:
        items = predict_payloads(self.ensemble, names, payloads, top=1)
        if items and all(item.error for item in items):
            from mlflow.exceptions import MlflowException

            shown = "; ".join(f"row {i}: {item.error}" for i, item in enumerate(items[:3]))
            more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
            raise MlflowException.invalid_parameter_value(f"no image could be read: {shown}{more}")
        return _frame(items, self.ensemble.class_names)


def _base64_payloads(values: list[Any]) -> tuple[list[str], list[bytes | str]]:
    """Names and image bytes (or the error, as text) of base64 values, each checked against
    the size limit before it is decoded."""
    import base64
    import binascii

    limit = 4 * math.ceil(MAX_BYTES / 3)
    names: list[str] = []
    payloads: list[bytes | str] = []
    for i, value in enumerate(values):
        names.append(f"<row {i}>")
        if not isinstance(value, str):
            payloads.append(f"{BASE64_COLUMN} must be base64 text, got {type(value).__name__}")
            continue
        text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        text = "".join(text.split())  # line-wrapped base64 (`base64` without -w0) is still base64
        if len(text) > limit:
            payloads.append(f"{len(text)} characters of base64 is above the limit of {MAX_BYTES} bytes; not decoded")
            continue
        try:
            payloads.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            payloads.append(f"{BASE64_COLUMN} is not valid base64")
    return names, payloads


def _no_fetch(url: str) -> bytes:
    raise FlowerExpError(f"{url}: URLs are not fetched by the MLflow model; download the image and pass its bytes")


def _input_values(model_input: Any) -> list[Any]:
    if isinstance(model_input, pd.DataFrame):
        if "image" in model_input.columns:
            return list(model_input["image"])
        if len(model_input.columns) == 1:
            return list(model_input.iloc[:, 0])
        raise FlowerExpError(f"expected a column 'image' (image bytes or file paths); got columns {list(model_input.columns)}")
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    try:
        return list(model_input)
    except TypeError:
        raise FlowerExpError(f"unsupported input {type(model_input).__name__}; pass a DataFrame with a column 'image'") from None


def _frame(items: list[Any], class_names: list[str]) -> pd.DataFrame:
    n = len(class_names)
    probs = np.full((len(items), n), np.nan)
    for row, item in enumerate(items):
        if item.error is None and item.probabilities is not None:
            probs[row] = item.probabilities
    ok = ~np.isnan(probs).any(axis=1)
    best = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    # object columns keep None as None (pandas would turn it into NaN in a string column).
    columns: dict[str, Any] = {
        "label": pd.Series([class_names[b] if b >= 0 else None for b in best], dtype=object),
        "label_index": best.astype(np.int64),
        "probability": np.where(ok, probs[np.arange(len(items)), np.maximum(best, 0)], np.nan),
        "error": pd.Series([item.error for item in items], dtype=object),
    }
    frame = pd.DataFrame(columns)
    # Class columns after the fixed ones, in label order.
    return pd.concat([frame, pd.DataFrame(probs, columns=list(class_names))], axis=1)
