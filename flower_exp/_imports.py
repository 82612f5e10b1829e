"""Lazy access to heavy dependencies.

`import tensorflow` costs seconds; the CLI must start instantly, so modules that need
TensorFlow call :func:`tensorflow` inside functions instead of importing it at the top.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .errors import MissingDependencyError

_INSTALL_HINT = {
    "tensorflow": "pip install -e '.[cpu]' (or '.[gpu]'; on a TPU VM use the TensorFlow already installed)",
    "optuna_dashboard": "pip install optuna-dashboard",
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
    """Return the ``tensorflow`` module, importing it (quietly) on first use.

    TensorFlow 2.21's native libraries print absl banners (oneDNN, CPU features) straight to
    file descriptor 2 while loading, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; they would turn
    every one-line error into a screenful. Set ``FLOWER_EXP_TF_LOGS=1`` to see them.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("FLOWER_EXP_TF_LOGS") == "1":
        return require("tensorflow")
    with _stderr_silenced():
        return require("tensorflow")


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
