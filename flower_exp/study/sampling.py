"""What Optuna draws from: the sweep's sampler (seeded per trial number), its pruner, and the
suggestion of a trial's parameters from the sweep file's search space."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ..config import ParamSpec, PrunerConfig, SamplerConfig


def make_sampler(cfg: SamplerConfig, params: dict[str, ParamSpec], seed: int | None = None) -> Any:
    """The Optuna sampler of a sweep (``seed`` overrides the file's).

    Seeded, a random or TPE trial's draws come from (seed, trial number), not from a sequence
    that every process starts afresh: a resumed study or another worker would otherwise replay
    the draws of trials already run, while the same seed still gives the same params per trial
    number."""
    import optuna

    seed = cfg.seed if seed is None else seed
    if cfg.name == "grid":
        # Resumes without replays as it is: it takes grid points the study has not visited. Its
        # seed shuffles the grid, so it must be one for every trial and process.
        return optuna.samplers.GridSampler({name: list(p.choices or []) for name, p in params.items()}, seed=seed)

    def build(trial_seed: int | None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if cfg.name == "random":
                return optuna.samplers.RandomSampler(seed=trial_seed)
            return optuna.samplers.TPESampler(
                seed=trial_seed,
                multivariate=cfg.multivariate,
                group=cfg.group and cfg.multivariate,
                n_startup_trials=cfg.n_startup_trials,
                constant_liar=True,  # parallel workers: don't all propose the same point
            )

    return build(None) if seed is None else _per_trial_seed_sampler()(build, seed)


def _trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed (what NumPy's RandomState takes) for trial ``number`` of a sweep seeded ``seed``."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


def _per_trial_seed_sampler():
    """A sampler that, before each trial, builds its Optuna sampler afresh seeded for that trial
    number (:func:`_trial_seed`) and delegates to it. Rebuilding uses only public constructors,
    where reseeding would reach into each sampler's private random states (TPE has two); what
    TPE keeps between trials (search-space caches) it derives from the study again."""
    from optuna.samplers import BaseSampler

    class PerTrialSeedSampler(BaseSampler):
        def __init__(self, build: Callable[[int], Any], seed: int):
            self._build, self._seed = build, seed
            # Optuna asks a sampler nothing about a trial before before_trial; this answers if it ever does.
            self._sampler = build(seed)

        def before_trial(self, study, trial) -> None:
            self._sampler = self._build(_trial_seed(self._seed, trial.number))
            self._sampler.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._sampler.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._sampler.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._sampler.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._sampler.after_trial(study, trial, state, values)

    return PerTrialSeedSampler


def make_pruner(cfg: PrunerConfig, epochs: int) -> Any:
    """The Optuna pruner of a sweep; ``epochs`` is a full trial's length (hyperband's max)."""
    import optuna

    if cfg.name == "none":
        return optuna.pruners.NopPruner()
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    max_resource = cfg.max_resource or epochs
    return optuna.pruners.HyperbandPruner(
        min_resource=min(cfg.min_resource, max_resource), max_resource=max_resource, reduction_factor=cfg.reduction_factor
    )


def suggest(trial: Any, params: dict[str, ParamSpec], fixed: dict[str, Any]) -> dict[str, Any]:
    """Ask ``trial`` for every param whose ``when`` condition holds, in file order."""
    values: dict[str, Any] = {}
    for name, spec in params.items():
        if spec.when and not all((values.get(k, fixed.get(k)) in allowed) for k, allowed in spec.when.items()):
            continue
        if spec.choices is not None:
            values[name] = trial.suggest_categorical(name, spec.choices)
        elif spec.is_int:
            step = int(spec.step) if spec.step else 1
            values[name] = trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            values[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    return values
