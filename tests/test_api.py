"""The public Python API (``flower_exp.sweep/train/best/predict``) survives submodule imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: the bug only shows when a same-named submodule is imported
# *after* the package, which an already-warm test process cannot reproduce reliably.
IMPORT_SUBMODULES = "import flower_exp.best, flower_exp.train, flower_exp.study, flower_exp.predictor\n"

CHECK = r"""
import importlib, sys, types
import flower_exp
from flower_exp.errors import FlowerExpError

public = [name for name in flower_exp.__all__ if name != "__version__"]
assert sorted(public) == ["best", "predict", "sweep", "train"], public
# Arguments that fail fast with a user error prove the function itself ran; the first call
# imports the same-named submodule when it was not imported yet (the notebook case).
calls = {
    "sweep": lambda: flower_exp.sweep(workers=0),
    "train": lambda: flower_exp.train("no-such-experiment"),
    "best": lambda: flower_exp.best(top=0),
    "predict": lambda: flower_exp.predict("no-such-export"),
}
assert sorted(calls) == sorted(public)
for name, call in calls.items():
    for _ in range(2):
        assert isinstance(getattr(flower_exp, name), types.FunctionType), (name, getattr(flower_exp, name))
        try:
            call()
        except FlowerExpError:
            pass
        else:
            raise AssertionError(f"{name}: no FlowerExpError")

import flower_exp.best as best_attr
from flower_exp.best import run_best
from flower_exp.train import run
assert best_attr is flower_exp.best  # documented: `import ... as` resolves through the attribute
assert isinstance(sys.modules["flower_exp.best"], types.ModuleType)
assert sys.modules["flower_exp.best"].run_best is run_best
assert importlib.import_module("flower_exp.train").run is run
print("OK")
"""


@pytest.mark.parametrize("first", ["submodules", "calls"])
def test_public_functions_stay_callable_after_submodule_imports(tmp_path, first):
    env = {k: v for k, v in os.environ.items() if k not in ("GCS_DS_PATH", "MLFLOW_TRACKING_URI")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-c", (IMPORT_SUBMODULES if first == "submodules" else "") + CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-2000:]


def test_submodule_attributes_still_importable():
    """``from flower_exp.<module> import name`` is how code reaches a shadowed module."""
    from flower_exp.best import run_best
    from flower_exp.train import run

    import flower_exp

    assert callable(run) and callable(run_best)
    assert flower_exp.best is not sys.modules["flower_exp.best"]
    assert sys.modules["flower_exp.best"].run_best is run_best
