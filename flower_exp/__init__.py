"""flower-exp: an experiment-tracking sweep harness for image classification.

The public Python API is four functions, :func:`sweep`, :func:`train`, :func:`best` and
:func:`predict`, mirroring the CLI commands of the same names.

Rule: ``flower_exp.<name>`` is always the public function, even where a submodule has the same
name (``flower_exp/train.py``, ``flower_exp/best.py``). Importing a submodule normally rebinds
the package attribute to the module, which turned ``flower_exp.best(...)`` into "'module' object
is not callable" once anything had imported ``flower_exp.best``. The package's module class
below refuses that one rebinding, so:

- ``flower_exp.train`` / ``flower_exp.best`` and ``from flower_exp import best`` give the function;
- ``from flower_exp.best import run_best``, ``importlib.import_module("flower_exp.best")`` and
  ``sys.modules["flower_exp.best"]`` give the module, as usual;
- ``import flower_exp.best as m`` gives the *function* (Python resolves ``as`` through the
  package attribute): use one of the forms above to reach a module.
"""

import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flower-exp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"


def sweep(*, log=print, on_event=None, **options):
    """Run or resume a sweep from Python (a notebook cell): the keyword arguments mirror
    ``flower-exp sweep`` (experiment, sweep, trials, timeout_min, budget_min, workers, study_name,
    storage, tracking_uri, new, force, seed, overrides — ``--set`` strings —, config, quiet; see
    ``flower_exp.study.SweepOptions``); ``log`` gets text lines, ``on_event`` progress events.
    Returns a ``SweepResult``."""
    from .study import SweepOptions, run_sweep

    return run_sweep(SweepOptions(**options), log=log, on_event=on_event)


def train(
    experiment: str | None = None,
    *,
    set: list[str] | None = None,
    config: str | None = None,
    budget_min: float | None = None,
    **kwargs,
):
    """Train one model from Python; ``set`` takes ``key=value`` overrides like ``--set``;
    ``budget_min`` ends training in time for the run to be over after that many minutes."""
    from .budget import Deadline, check_minutes
    from .config import load_experiment
    from .train import run

    budget_min = check_minutes(budget_min)
    deadline = Deadline.in_minutes(budget_min) if budget_min is not None else None
    return run(load_experiment(experiment, config, set or []), deadline=deadline, **kwargs)


def best(*, log=print, **options):
    """Select the best runs, search ensemble weights honestly and optionally refit/export;
    keyword arguments mirror ``flower-exp best`` (experiment, study, top, metric, diverse,
    method, trials, seed, export, refit, force, force_ensemble, register, tracking_uri,
    config; see ``flower_exp.best.BestOptions``); ``log`` gets text lines. Returns a ``BestResult``."""
    from .best import BestOptions, run_best

    return run_best(BestOptions(**options), log=log)


def predict(export: str, sources: list[str] | None = None, *, top: int = 5, tta: bool = False):
    """Predict image files or http(s) URLs with an export; returns one ``ItemPrediction`` each."""
    from .export_format import load_export
    from .predictor import predict_sources

    return predict_sources(load_export(export), list(sources or []), top=top, tta=tta)


__all__ = ["__version__", "best", "predict", "sweep", "train"]

_PUBLIC_FUNCTIONS = {name: globals()[name] for name in ("best", "predict", "sweep", "train")}


class _Package(types.ModuleType):
    """The package's module class: keeps the public functions when a same-named submodule
    is imported (the import system binds every loaded submodule on its parent with setattr)."""

    def __setattr__(self, name: str, value: object) -> None:
        if (
            isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
            and self.__dict__.get(name) is _PUBLIC_FUNCTIONS.get(name)
        ):
            return  # the submodule stays reachable through sys.modules and `from ... import`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
