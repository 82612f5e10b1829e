"""flower-exp: an experiment-tracking sweep harness for image classification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flower-exp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"


def sweep(**kwargs):
    """Run or resume a sweep from Python (a notebook cell): the keyword arguments mirror
    ``flower-exp sweep`` (experiment, sweep, trials, timeout_min, workers, study_name, storage,
    tracking_uri, new, force, seed, config, quiet). Returns a ``SweepResult``."""
    from .study import run_sweep

    return run_sweep(**kwargs)


def train(experiment: str | None = None, *, set: list[str] | None = None, config: str | None = None, **kwargs):
    """Train one model from Python; ``set`` takes ``key=value`` overrides like ``--set``."""
    from .config import load_experiment
    from .train import run

    return run(load_experiment(experiment, config, set or []), **kwargs)


def best(**kwargs):
    """Select the best runs, search ensemble weights honestly and optionally refit/export;
    keyword arguments mirror ``flower-exp best`` (experiment, study, top, metric, diverse,
    method, trials, seed, export, refit, force, force_ensemble, register, tracking_uri,
    config). Returns a ``BestResult``."""
    from .best import run_best

    return run_best(**kwargs)


def predict(export: str, sources: list[str] | None = None, *, top: int = 5, tta: bool = False):
    """Predict image files or http(s) URLs with an export; returns one ``ItemPrediction`` each."""
    from .predictor import load_export, predict_sources

    return predict_sources(load_export(export), list(sources or []), top=top, tta=tta)


__all__ = ["__version__", "best", "predict", "sweep", "train"]
