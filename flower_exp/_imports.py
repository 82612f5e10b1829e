"""Lazy access to heavy dependencies.

`import tensorflow` costs seconds; the CLI must start instantly, so modules that need
TensorFlow call :func:`tensorflow` inside functions instead of importing it at the top.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import MissingDependencyError

_INSTALL_HINT = {
    "tensorflow": "pip install -e '.[cpu]' (or '.[gpu]'; on a TPU VM use the TensorFlow already installed)",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        root = module.split(".")[0]
        hint = _INSTALL_HINT.get(root, f"pip install {root}")
        raise MissingDependencyError(f"{module} is not installed ({exc}); install it with: {hint}") from exc


def tensorflow() -> ModuleType:
    """Return the ``tensorflow`` module, importing it (quietly) on first use."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow")
