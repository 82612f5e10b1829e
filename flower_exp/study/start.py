"""Everything before a sweep's first trial: the options checked, the experiment and the sweep
file loaded against each other, the storage opened, the study created or resumed (``new``,
``force``, the file's ``enqueue`` entries), its MLflow parent run, and the spec the workers
start from."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..budget import Deadline, check_minutes
from ..config import (
    ResolvedExperiment,
    SweepConfig,
    check_study_name,
    find_config,
    load_experiment,
    load_sweep,
    project_dir,
    sweep_overrides,
)
from ..errors import FlowerExpError
from ..tracking import Tracker, default_target, redact
from .names import ATTR_ENQUEUED
from .options import SweepOptions, SweepSpec
from .parent import PARENT_WAIT_S, _parent_run, _wait_for_parent
from .sampling import make_pruner, make_sampler
from .scoring import _count
from .storage import (
    StaleTrialHandler,
    _default_study_name,
    _refuse_in_memory_storage,
    default_storage_url,
    find_sweep_file,
    open_storage,
)


@dataclass
class StartedSweep:
    """A sweep ready for its first trial, in the process that started it."""

    spec: SweepSpec
    study: Any  # the optuna.Study
    store: Any  # its storage, to load the study again once the workers are done
    exp: ResolvedExperiment
    sweep_cfg: SweepConfig
    tracker: Tracker


def start_sweep(options: SweepOptions, log: Callable[[str], None]) -> StartedSweep:
    """Check ``options``, open the storage, create or resume the study and its parent run, and
    log which; see :func:`flower_exp.study.run_sweep`."""
    import optuna

    budget_min, timeout_min, workers = options.budget_min, options.timeout_min, options.workers
    budget = Deadline.in_minutes(check_minutes(budget_min)) if budget_min is not None else None

    if workers < 1:
        raise FlowerExpError(f"--workers {workers}: must be >= 1")
    if timeout_min is not None and not 0 < timeout_min < math.inf:
        raise FlowerExpError(f"--timeout {timeout_min:g}: must be a positive number of minutes")
    if options.study_name is not None:
        check_study_name(options.study_name)
    if options.storage is not None:
        _refuse_in_memory_storage(options.storage)
    config_path = find_config(options.config)
    sweep_path = find_sweep_file(options.sweep, config_path)
    overrides = tuple(options.overrides)
    sweep_cfg = load_sweep(sweep_path)
    exp = load_experiment(options.experiment or sweep_cfg.experiment, config_path, list(overrides))
    sweep_cfg = _checked_sweep(sweep_path, exp, overrides)
    total = options.trials if options.trials is not None else sweep_cfg.trials
    if total < 1:
        raise FlowerExpError(f"--trials {total}: must be >= 1")
    name = options.study_name or _default_study_name(exp.name, sweep_path)
    storage_url = options.storage or default_storage_url(config_path)
    # The storage first: a bad or unreachable one must fail before anything is written.
    on_stale = StaleTrialHandler(None, exp.name, sweep_cfg.heartbeat.max_retry)
    store = open_storage(storage_url, sweep_cfg.heartbeat, on_stale)
    tracking = on_stale.tracking = default_target(project_dir(config_path), options.tracking_uri)
    tracker = Tracker(tracking, exp.name)

    existing = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    if name in existing and options.new:
        if not options.force:
            raise FlowerExpError(
                f"study {name!r} already exists in {redact(storage_url)} ({existing[name].n_trials} trials); "
                "rerun without --new to resume it, or add --force to delete it and start over"
            )
        optuna.delete_study(study_name=name, storage=store)
        log(f"deleted study {name!r} (--new --force)")
    epochs = int(sweep_cfg.fixed.get("epochs", exp.config.epochs))
    study_args = dict(
        study_name=name,
        storage=store,
        sampler=make_sampler(sweep_cfg.sampler, sweep_cfg.params, options.seed),
        pruner=make_pruner(sweep_cfg.pruner, epochs),
        direction="maximize",
    )
    try:
        study = optuna.create_study(**study_args)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(**study_args, load_if_exists=True)
        # Study names are unique in the storage: of several machines starting together, only
        # the one that created the study enqueues and creates the MLflow parent run.
        _wait_for_parent(study, PARENT_WAIT_S)
    resumed = len(study.trials) > 0
    if not study.user_attrs.get(ATTR_ENQUEUED):
        for entry in sweep_cfg.enqueue:
            study.enqueue_trial(entry, skip_if_exists=True)
        study.set_user_attr(ATTR_ENQUEUED, True)
        study.set_user_attr("experiment", exp.name)
        study.set_user_attr("sweep_file", str(sweep_path))
    parent = _parent_run(study, tracker, name, storage_url, sweep_cfg, total, overrides)
    log(
        f"{'resuming' if resumed else 'starting'} study {name!r} ({redact(storage_url)}): "
        f"{_count(study)['finished']} of {total} trials done; MLflow parent run {parent}"
    )
    spec = SweepSpec(
        config_path=str(config_path),
        experiment=exp.name,
        sweep_path=str(sweep_path),
        study_name=name,
        storage_url=storage_url,
        tracking=tracking,
        parent_run_id=parent,
        total_trials=total,
        deadline=time.time() + 60 * (timeout_min or sweep_cfg.timeout_min) if (timeout_min or sweep_cfg.timeout_min) else None,
        quiet=options.quiet,
        budget=budget,
        seed=options.seed,
        overrides=overrides,
    )
    return StartedSweep(spec=spec, study=study, store=store, exp=exp, sweep_cfg=sweep_cfg, tracker=tracker)


def _checked_sweep(sweep_path: str | Path, exp: ResolvedExperiment, overrides: Sequence[str]) -> SweepConfig:
    """The sweep file checked key by key against ``exp`` (which has ``overrides`` applied), with
    the ``--set`` values held fixed over the file's own ``fixed``."""
    searched = load_sweep(sweep_path).params
    return load_sweep(sweep_path, exp.config, fixed=sweep_overrides(exp.config, overrides, searched, sweep_path))
