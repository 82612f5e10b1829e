"""The sweep: an Optuna study whose trials are tracked training runs.

Optuna proposes a configuration, :func:`flower_exp.train.run` trains it as a nested MLflow
child run under one parent run per study, and the pruner sees ``val_macro_f1`` after every
epoch. The study lives in Optuna storage (a journal file under ``mlruns/optuna/`` by default,
any Optuna storage URL with ``--storage``), so rerunning the same command resumes it, several
processes or machines can share it, and a trial whose worker died is retried (heartbeats).

(This module is ``study`` rather than ``sweep`` because ``flower_exp.sweep`` is the public
function of the Python API; a submodule of that name would shadow it.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    ExperimentConfig,
    HeartbeatConfig,
    ParamSpec,
    PrunerConfig,
    ResolvedExperiment,
    SamplerConfig,
    SweepConfig,
    apply_values,
    check_study_name,
    find_config,
    load_experiment,
    load_sweep,
    project_dir,
    resolve,
    sweep_overrides,
)
from .budget import Deadline, check_minutes
from .errors import ConfigError, DataError, FlowerExpError, RecordingFailed
from .signals import exit_status, interrupt_once
from .tracking import (
    SEARCH_PARAM_PREFIX,
    TAG_ERROR,
    TAG_KIND,
    TAG_PREFIX,
    TAG_STATE,
    TAG_STUDY,
    TAG_SUGGESTED,
    Tracker,
    TrackingTarget,
    default_target,
    redact,
)

TAG_SWEEP = TAG_PREFIX + "sweep"
TAG_TRIAL = TAG_PREFIX + "trial_number"
# The sweep parent's metrics carry the sweep_ prefix: a parent logging a trial's metric name
# (best_val_macro_f1) would rank among its own trials in every runs table sorted by it.
METRIC_SWEEP_BEST = "sweep_best_val_macro_f1"  # best so far, step = trial number
METRIC_SWEEP_BEST_FINAL = METRIC_SWEEP_BEST + "_final"
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_RUN = "mlflow_run_id"
ATTR_FAIL = "fail_reason"
ATTR_ENQUEUED = "flower_exp_enqueued"
ATTR_RETRY_OF = "retry_of_trial"
ATTR_STOPPED_BY = "stopped_by"
# A continuation (the end of a budgeted sweep with continue_best): the number of the trial whose
# best epoch's weights it trains on from.
ATTR_CONTINUES = "continues_trial"
# A trial whose result could not be recorded (tracking server down, disk full): FAILED but not
# counted against the budget, and queued again with the same params.
ATTR_NOT_RECORDED = "recording_error"
ATTR_UNRECORDED_RUN = "unrecorded_run_id"
# A trial whose configuration was invalid (a sweep file that slipped past validation): FAILED,
# not counted against the budget, and the sweep stops.
ATTR_CONFIG_ERROR = "config_error"
HEARTBEAT_ATTR = "flower_exp:heartbeat"
DEFAULT_SWEEP = "demo"
# A sweep whose every trial fails (broken data, missing weights) stops instead of burning budget.
MAX_CONSECUTIVE_FAILURES = 5
# How long a process joining a just-created study waits for its creator's MLflow parent run.
PARENT_WAIT_S = 30.0


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker process needs to join a sweep (picklable)."""

    config_path: str | None
    experiment: str
    sweep_path: str
    study_name: str
    storage_url: str
    tracking: TrackingTarget
    parent_run_id: str
    total_trials: int
    deadline: float | None  # time.time() after which no trial starts
    worker: int = 0
    quiet: bool = False
    budget: Deadline | None = None  # the sweep is over by then, the running trial included
    seed: int | None = None  # the sampler seed given to the sweep (None: the sweep file's)
    overrides: tuple[str, ...] = ()  # the sweep's --set KEY=VALUE, applied in every worker


@dataclass
class SweepResult:
    """What a sweep command reports at the end."""

    study_name: str
    storage_url: str
    parent_run_id: str
    experiment: str
    counts: dict[str, int]
    best: list[dict[str, Any]] = field(default_factory=list)  # top trials: number, value, params, run_id


# --------------------------------------------------------------------------- locating files


def find_sweep_file(name: str | None, config_path: Path) -> Path:
    """``name`` as a path, else ``<project>/sweeps/<name>.yaml``, else the packaged copy."""
    name = name or DEFAULT_SWEEP
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name:
        if not candidate.is_file():
            raise FlowerExpError(f"{name}: sweep file not found")
        return candidate.resolve()
    local = project_dir(config_path) / "sweeps" / f"{name}.yaml"
    if local.is_file():
        return local
    from importlib import resources

    packaged = Path(str(resources.files("flower_exp") / "resources" / "sweeps" / f"{name}.yaml"))
    if packaged.is_file():
        return packaged
    raise FlowerExpError(f"sweep {name!r}: no {local} (and no packaged sweep of that name)")


def default_storage_url(config_path: Path) -> str:
    """The journal file shared by local worker processes."""
    folder = project_dir(config_path) / "mlruns" / "optuna"
    return str(folder / "journal.log")


# --------------------------------------------------------------------------- storage


def open_storage(url: str, heartbeat: HeartbeatConfig, on_stale: Callable | None = None, readonly: bool = False) -> Any:
    """An Optuna storage with heartbeats: a journal file (path ending ``.log`` or
    ``journal:PATH``) or an RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``).

    Processes that run trials pass ``on_stale`` (a dead worker's trial is theirs to re-queue).
    A journal is checked and a torn last line cut off (:mod:`flower_exp.journal`), unless
    ``readonly`` (``flower-exp status``): then it is never changed and may be read-only."""
    import optuna

    # Failed trials are reported by the sweep itself, without Optuna's traceback per failure.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if url.startswith("journal:") or url.endswith(".log") or "://" not in url:
        from .journal import open_journal

        path = Path(url.removeprefix("journal:"))
        try:
            backend = open_journal(path, readonly=readonly)
        except OSError as exc:
            raise FlowerExpError(f"Optuna storage {path}: cannot open ({exc.strerror or exc})") from None
        return _journal_with_heartbeat()(backend, heartbeat.interval_s, heartbeat.grace_s, on_stale)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise FlowerExpError(
            f"--storage {redact(url)}: unknown scheme {scheme!r}; allowed: a journal file path, sqlite:///, postgresql://, mysql://"
        )
    engine_kwargs: dict[str, Any] | None = None
    if scheme != "sqlite":
        engine_kwargs = {"pool_pre_ping": True}
    if scheme == "postgresql":
        # Fail fast on a host that drops packets (libpq would wait for the OS TCP timeout).
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    _with_installed_driver(url),
                    heartbeat_interval=heartbeat.interval_s,
                    grace_period=heartbeat.grace_s,
                    heartbeat_stale_trial_callback=on_stale,
                    engine_kwargs=engine_kwargs,
                )
        except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            # Workers starting together on an empty database race to create the tables
            # ("duplicate key ... pg_type", "already exists"); the loser retries.
            if attempt < 2 and ("already exists" in first or "duplicate key" in first.lower()):
                time.sleep(1 + attempt)
                continue
            raise FlowerExpError(f"Optuna storage {redact(url)}: unavailable ({redact(first)})") from None


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _journal_with_heartbeat():
    """JournalStorage plus Optuna's heartbeat protocol (Optuna only ships it for RDB storage):
    a running trial stamps a system attribute every ``interval`` seconds; any worker that
    starts a trial fails the RUNNING ones whose stamp is older than ``grace`` seconds, and the
    stale-trial callback re-queues them."""
    # Not re-exported by optuna.storages; it is the protocol RDBStorage implements.
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalStorage
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        def __init__(self, backend, interval: int, grace: int, on_stale: Callable | None):
            super().__init__(backend)
            self._interval, self._grace, self._on_stale = interval, grace, on_stale

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                # A retry inherits its dead predecessor's system attrs, stale heartbeat included:
                # a trial counts as alive from its own start on.
                stamps = [trial.system_attrs.get(HEARTBEAT_ATTR)]
                if trial.datetime_start is not None:
                    stamps.append(trial.datetime_start.timestamp())
                stamp = max((s for s in stamps if s is not None), default=None)
                if stamp is not None and now - stamp > self._grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self):
            return self._on_stale

    return HeartbeatJournalStorage


class StaleTrialHandler:
    """Called for a trial whose worker died: mark its MLflow run FAILED, then re-queue it."""

    def __init__(self, tracking: TrackingTarget, experiment: str, max_retry: int):
        self.tracking, self.experiment, self.max_retry = tracking, experiment, max_retry

    def __call__(self, study, trial) -> None:
        import optuna
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        run_id = trial.user_attrs.get(ATTR_RUN)
        try:
            tracker = Tracker(self.tracking, self.experiment)
            if run_id is None:
                found = tracker.client.search_runs(
                    [tracker.experiment_id],
                    f"tags.`{TAG_STUDY}` = '{study.study_name}' and tags.`{TAG_TRIAL}` = '{trial.number}' "
                    "and attributes.status = 'RUNNING'",
                )
                run_id = found[0].info.run_id if found else None
            if run_id is not None:
                tracker.set_tags(run_id, {TAG_STATE: "failed", TAG_PREFIX + "error": "worker died (no heartbeat); trial re-queued"})
                tracker.end(run_id, "FAILED")
        except FlowerExpError:
            pass  # the store is down: the trial is still re-queued below
        # The retry inherits user attrs: say which trial (and run) it replaces.
        trial.user_attrs = {**trial.user_attrs, ATTR_RETRY_OF: trial.user_attrs.get(ATTR_RETRY_OF, trial.number)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


# --------------------------------------------------------------------------- sampler / pruner / space


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


# --------------------------------------------------------------------------- the sweep


def _refuse_in_memory_storage(url: str) -> None:
    """An in-memory SQLite study vanishes when the process exits (each worker gets its own)."""
    if url.split("://", 1)[0].split("+", 1)[0] != "sqlite":
        return
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # sqlalchemy raises several types for a malformed URL: open_storage reports it
        return
    if not database or database == ":memory:" or database.startswith("file::memory:") or "mode=memory" in url:
        raise FlowerExpError(f"--storage {url}: an in-memory database is lost when the sweep exits; "
                             "use a file (sqlite:///mlruns/optuna.db) or the default journal")


def _default_study_name(experiment: str, sweep_path: Path) -> str:
    return check_study_name(f"{experiment}-{sweep_path.stem}",
                            f"study name of -e {experiment} -s {sweep_path.stem} (choose one with --study):")


def run_sweep(
    *,
    experiment: str | None = None,
    sweep: str | None = None,
    trials: int | None = None,
    timeout_min: float | None = None,
    budget_min: float | None = None,
    workers: int = 1,
    study_name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    new: bool = False,
    force: bool = False,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    config: str | os.PathLike | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep until the study has ``trials`` finished or pruned trials.

    Rerunning with the same arguments resumes: finished trials are kept, the MLflow parent
    run is reused and ``trials`` counts the total. ``new=True`` refuses to replace an existing
    study unless ``force=True``. ``timeout_min``: no trial starts after that many minutes;
    ``budget_min``: the sweep is over by then, the running trial stopped at an epoch boundary
    (kept as PRUNED with ``stopped_by: budget``, its best epoch saved). ``on_event`` receives
    progress events of in-process trials (``trial_start``, ``epoch``, ``trial_end``) for a live
    display; ``log`` gets text lines. ``overrides`` are ``--set KEY=VALUE`` strings: parsed and
    validated like ``train --set``, applied to the experiment and held fixed in every trial over
    the sweep file's ``fixed`` (a searched key is refused); the parent run records them.
    """
    import optuna

    budget = Deadline.in_minutes(check_minutes(budget_min)) if budget_min is not None else None

    if workers < 1:
        raise FlowerExpError(f"--workers {workers}: must be >= 1")
    if timeout_min is not None and not 0 < timeout_min < math.inf:
        raise FlowerExpError(f"--timeout {timeout_min:g}: must be a positive number of minutes")
    if study_name is not None:
        check_study_name(study_name)
    if storage is not None:
        _refuse_in_memory_storage(storage)
    config_path = find_config(config)
    sweep_path = find_sweep_file(sweep, config_path)
    overrides = tuple(overrides)
    sweep_cfg = load_sweep(sweep_path)
    exp = load_experiment(experiment or sweep_cfg.experiment, config_path, list(overrides))
    sweep_cfg = _checked_sweep(sweep_path, exp, overrides)
    total = trials if trials is not None else sweep_cfg.trials
    if total < 1:
        raise FlowerExpError(f"--trials {total}: must be >= 1")
    name = study_name or _default_study_name(exp.name, sweep_path)
    storage_url = storage or default_storage_url(config_path)
    # The storage first: a bad or unreachable one must fail before anything is written.
    on_stale = StaleTrialHandler(None, exp.name, sweep_cfg.heartbeat.max_retry)
    store = open_storage(storage_url, sweep_cfg.heartbeat, on_stale)
    tracking = on_stale.tracking = default_target(project_dir(config_path), tracking_uri)
    tracker = Tracker(tracking, exp.name)

    existing = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    if name in existing and new:
        if not force:
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
        sampler=make_sampler(sweep_cfg.sampler, sweep_cfg.params, seed),
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
        quiet=quiet,
        budget=budget,
        seed=seed,
        overrides=overrides,
    )
    with interrupt_once():
        try:
            if workers == 1:
                run_worker(spec, study=study, exp=exp, sweep_cfg=sweep_cfg, tracker=tracker, log=log, on_event=on_event)
            else:
                _run_processes(spec, workers, log)
        except KeyboardInterrupt:
            tracker.set_tags(parent, {TAG_STATE: "killed"})
            tracker.end(parent, "KILLED")
            raise
        except Exception as exc:
            # The sweep stopped on an error (damaged data, tracking store gone, ...): the parent
            # run must not stay RUNNING in the UI. A rerun resumes the study and reopens it.
            with contextlib.suppress(Exception):  # the store itself may be what failed
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
                tracker.set_tags(parent, {TAG_STATE: "failed", TAG_ERROR: reason})
                tracker.end(parent, "FAILED")
            raise
    study = optuna.load_study(study_name=name, storage=store)
    _finish_parent(study, tracker, parent, total, log)
    return SweepResult(
        study_name=name,
        storage_url=storage_url,
        parent_run_id=parent,
        experiment=exp.name,
        counts=_count(study),
        best=top_trials(study, 5),
    )


def _checked_sweep(sweep_path: str | Path, exp: ResolvedExperiment, overrides: Sequence[str]) -> SweepConfig:
    """The sweep file checked key by key against ``exp`` (which has ``overrides`` applied), with
    the ``--set`` values held fixed over the file's own ``fixed``."""
    searched = load_sweep(sweep_path).params
    return load_sweep(sweep_path, exp.config, fixed=sweep_overrides(exp.config, overrides, searched, sweep_path))


def run_worker(
    spec: SweepSpec,
    *,
    study: Any = None,
    exp: ResolvedExperiment | None = None,
    sweep_cfg: SweepConfig | None = None,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run trials until the study reaches ``spec.total_trials`` (finished + pruned + running)
    or the deadline passes. Safe to run in many processes against one storage."""
    import optuna

    exp = exp or load_experiment(spec.experiment, spec.config_path, list(spec.overrides))
    sweep_cfg = sweep_cfg or _checked_sweep(spec.sweep_path, exp, spec.overrides)
    tracker = tracker or Tracker(spec.tracking, exp.name)
    if study is None:
        on_stale = StaleTrialHandler(spec.tracking, exp.name, sweep_cfg.heartbeat.max_retry)
        store = open_storage(spec.storage_url, sweep_cfg.heartbeat, on_stale)
        epochs = int(sweep_cfg.fixed.get("epochs", exp.config.epochs))
        study = optuna.load_study(
            study_name=spec.study_name,
            storage=store,
            # Seeded per trial: no per-worker offset needed, but the sweep's --seed must reach here.
            sampler=make_sampler(sweep_cfg.sampler, sweep_cfg.params, spec.seed),
            pruner=make_pruner(sweep_cfg.pruner, epochs),
        )
    prefix = f"[worker {spec.worker}] " if spec.worker else ""
    objective = _Objective(spec, exp, sweep_cfg, tracker, lambda m: log(prefix + m), on_event or (lambda _e: None))
    with interrupt_once():
        _worker_loop(spec, study, objective, log, prefix, poll_s=sweep_cfg.heartbeat.interval_s)


def _worker_loop(
    spec: SweepSpec, study: Any, objective: _Objective, log: Callable[[str], None], prefix: str, poll_s: float
) -> None:
    import optuna

    waiting = False
    while True:
        # Dead workers' trials would otherwise count as running until some trial starts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if spec.deadline is not None and time.time() >= spec.deadline:
            log(prefix + "timeout reached: no new trials")
            return
        if spec.budget is not None and spec.budget.left_s() < objective.shortest_trial_s:
            log(prefix + f"budget spent ({spec.budget.describe()}): no new trials")
            return
        if objective.final_phase() and scored_trials(study):
            source = _next_to_continue(study)
            if source is None:
                log(prefix + "continue_best: every trial with a model has been continued; no new trials")
                return
            study.enqueue_trial(dict(source.params), user_attrs={ATTR_CONTINUES: source.number})
        counts = _count(study)
        if counts["waiting"] == 0 and counts["finished"] + counts["running"] + counts["failed_counted"] >= spec.total_trials:
            if counts["running"] == 0 or counts["finished"] + counts["failed_counted"] >= spec.total_trials:
                return
            # The budget is spoken for by trials running elsewhere; wait for them, so that if
            # their worker dies this one retries the trial instead of leaving the study short.
            if not waiting:
                log(prefix + f"waiting for {counts['running']} trial(s) running elsewhere (retried here if their worker dies)")
                waiting = True
            time.sleep(poll_s)
            continue
        waiting = False
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[objective.after_trial], gc_after_trial=True)
        if objective.stop is not None:
            raise objective.stop  # the next trial could not be recorded either
        if objective.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.get_trials(deepcopy=False)[-1].user_attrs.get(ATTR_FAIL, "unknown error")
            raise FlowerExpError(
                f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed in this worker; last: {last.splitlines()[0][:300]}"
            )


class _Objective:
    def __init__(self, spec: SweepSpec, exp: ResolvedExperiment, sweep_cfg: SweepConfig, tracker: Tracker, log, emit):
        self.spec, self.exp, self.sweep_cfg, self.tracker, self.log, self.emit = spec, exp, sweep_cfg, tracker, log, emit
        self.consecutive_failures = 0
        self.stop: FlowerExpError | None = None
        # Measured on this worker's trials, for the budget: the longest time from the end of
        # training to the end of a run, and the longest a trial took to reach the epoch at
        # which the pruner first judges it, plus that finishing time. With less than that left
        # no trial starts: one that cannot get that far would only add noise to the study.
        self.finish_reserve_s: float | None = None
        self.shortest_trial_s = 0.0
        self.full_trial_s = 0.0  # the longest trial that ran all its epochs (for continue_best)
        self.judged_at_epoch = max(1, sweep_cfg.pruner.min_resource if sweep_cfg.pruner.name == "hyperband"
                                   else sweep_cfg.pruner.n_warmup_steps + 1 if sweep_cfg.pruner.name == "median" else 1)

    def __call__(self, trial) -> float:
        try:
            return self._run(trial)
        except Exception as exc:
            import optuna

            if isinstance(exc, RecordingFailed):
                self._requeue_unrecorded(trial, exc)
            elif isinstance(exc, ConfigError):
                self._stop_on_invalid_config(trial, exc)
            elif not isinstance(exc, optuna.TrialPruned):
                # Marks the failure as the trial's own (it uses up budget; a dead worker's does not).
                trial.set_user_attr(ATTR_FAIL, f"{type(exc).__name__}: {exc}"[:1000])
                self.log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
                self.consecutive_failures += 1
                if isinstance(exc, DataError):
                    self.stop = exc  # every trial reads the same shards: stop, naming the file
            raise

    def _stop_on_invalid_config(self, trial, exc: ConfigError) -> None:
        """FAILED without ATTR_FAIL (not counted against ``--trials``), and the sweep stops:
        every later trial would be built from the same broken sweep file."""
        trial.set_user_attr(ATTR_CONFIG_ERROR, str(exc)[:1000])
        self.stop = ConfigError(f"{exc}; trial {trial.number} stopped the sweep and is not counted")
        self.log(f"trial {trial.number} failed: {exc}")

    def _requeue_unrecorded(self, trial, exc: RecordingFailed) -> None:
        """FAILED with the reason, the same params queued again (not counted as budget used)."""
        trial.set_user_attr(ATTR_NOT_RECORDED, str(exc)[:1000])
        attrs = {ATTR_RETRY_OF: trial.user_attrs.get(ATTR_RETRY_OF, trial.number)}
        if trial.user_attrs.get(ATTR_RUN):
            attrs[ATTR_UNRECORDED_RUN] = trial.user_attrs[ATTR_RUN]
        trial.study.enqueue_trial(trial.params, user_attrs=attrs)
        self.stop = FlowerExpError(
            f"trial {trial.number}: result not recorded, marked FAILED and queued again; "
            f"rerun the same command once fixed: {exc}"
        )
        self.log(f"trial {trial.number} failed: {exc}")

    def _run(self, trial) -> float:
        import optuna

        from .train import Pruned, run

        orphan = trial.user_attrs.get(ATTR_UNRECORDED_RUN)
        if orphan:
            self.tracker.close_orphan(orphan, f"result not recorded; re-run as trial {trial.number}")

        values = suggest(trial, self.sweep_cfg.params, self.sweep_cfg.fixed)
        cfg: ExperimentConfig = apply_values(
            self.exp.config, {**self.sweep_cfg.fixed, **values}, self.spec.sweep_path, f"trial {trial.number}"
        )
        continues = trial.user_attrs.get(ATTR_CONTINUES)
        if continues is not None:
            # A warm restart of the trial's own schedule, from its best weights, at a lower peak
            # (full peak if the sweep file no longer has continue_best: a queued continuation).
            scale = self.sweep_cfg.continue_best.lr_scale if self.sweep_cfg.continue_best else 1.0
            cfg = apply_values(cfg, {"lr_max": cfg.lr_max * scale}, self.spec.sweep_path, f"trial {trial.number}")
        trial_exp = resolve(cfg, Path(self.exp.config_path), os.environ)
        retried = trial.user_attrs.get(ATTR_RETRY_OF)
        tags = {
            TAG_KIND: "trial",
            TAG_SWEEP: self.spec.study_name,
            TAG_STUDY: self.spec.study_name,
            TAG_TRIAL: str(trial.number),
            TAG_SUGGESTED: json.dumps(values, default=str),
        }
        if retried is not None:
            tags[TAG_PREFIX + "retry_of_trial"] = str(retried)
        if continues is not None:
            source_run = trial.study.get_trials(deepcopy=False)[continues].user_attrs[ATTR_RUN]
            tags.update({TAG_PREFIX + "continues_trial": str(continues), TAG_PREFIX + "continued_from_run": source_run})
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        self.log(f"trial {trial.number}: continues trial {continues} from its best epoch, lr_max {_short(cfg.lr_max)}"
                 if continues is not None else f"trial {trial.number}: {shown}")
        self.emit({"kind": "trial_start", "number": trial.number, "epochs": cfg.epochs})
        started = time.time()
        judged_s: list[float] = []  # seconds from the start to the pruner's first judgement
        trial_best = [-math.inf]

        def report(epoch: int, value: float) -> None:
            if epoch == min(self.judged_at_epoch, cfg.epochs):
                judged_s.append(time.time() - started)
            trial_best[0] = max(trial_best[0], value)
            event = {"kind": "epoch", "number": trial.number, "epoch": epoch, "epochs": cfg.epochs, "value": value,
                     "trial_best": trial_best[0]}
            if self.spec.budget is not None:
                event.update(budget_used_s=self.spec.budget.used_s(), budget_left_s=self.spec.budget.left_s())
            self.emit(event)
            trial.report(value, epoch)
            # A continuation is ahead of fresh trials at every epoch: never judged against them.
            if continues is None and trial.should_prune():
                raise Pruned(epoch, value)

        def on_run(run_id: str) -> None:
            trial.set_user_attr(ATTR_RUN, run_id)
            # Among ~55 params the searched ones would be hard to find in the MLflow UI.
            self.tracker.log_params(run_id, {SEARCH_PARAM_PREFIX + k: v for k, v in values.items()})

        with tempfile.TemporaryDirectory(prefix="flower-exp-continue-") as tmp:
            init_weights = None if continues is None else self.tracker.download(source_run, "model/model.keras", tmp)
            result = run(
                trial_exp,
                tracker=self.tracker,
                run_name=f"trial-{trial.number}",
                parent_run_id=self.spec.parent_run_id,
                tags=tags,
                pruning_hook=report,
                progress=None if self.spec.quiet else (lambda m: self.log(f"trial {trial.number}: {m}")),
                on_run_start=on_run,
                deadline=self._deadline(trial, continues),
                finish_reserve_s=self.finish_reserve_s,
                init_weights=init_weights,
            )
        if result.state == "finished" and continues is None:
            self.full_trial_s = max(self.full_trial_s, time.time() - started)
        self.consecutive_failures = 0
        self._measured(result.finish_s, judged_s)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        if result.state == "stopped":
            # Cut short by the budget, not by its own merit: PRUNED tells the sampler its
            # score is from fewer epochs than a full trial's; the run keeps its best epoch.
            trial.set_user_attr(ATTR_STOPPED_BY, "budget")
            raise optuna.TrialPruned(f"stopped by the budget at epoch {result.epochs_run}")
        if result.state == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {result.epochs_run}")
        return result.best_val_macro_f1

    def _exploration_end(self) -> Deadline | None:
        """With ``continue_best`` and a budget, when exploring ends: ``budget_fraction`` of the
        budget before its deadline."""
        cont, budget = self.sweep_cfg.continue_best, self.spec.budget
        if cont is None or budget is None:
            return None
        return Deadline(at=budget.at - cont.budget_fraction * (budget.at - budget.started), started=budget.started)

    def final_phase(self) -> bool:
        """Exploring has ended (see :meth:`_exploration_end`), or a new trial could not reach its
        first judgement before it does. From then on the best trials train on instead of new
        ones starting (see :func:`_next_to_continue`)."""
        end = self._exploration_end()
        return end is not None and end.left_s() < self.shortest_trial_s

    def _deadline(self, trial, continues: int | None) -> Deadline | None:
        """A continuation runs to the budget's deadline; an exploring trial only to the end of
        exploration (stopped there, its best epoch kept: the final phase may continue it), once
        some trial has a model to continue."""
        end = self._exploration_end()
        if continues is not None or end is None or not scored(trial.study.get_trials(deepcopy=False)):
            return self.spec.budget
        return end

    def _measured(self, finish_s: float | None, judged_s: list[float]) -> None:
        if finish_s is not None:
            self.finish_reserve_s = max(self.finish_reserve_s or 0.0, finish_s)
        if judged_s:
            self.shortest_trial_s = max(self.shortest_trial_s, judged_s[0] + (self.finish_reserve_s or 0.0))

    def after_trial(self, study, trial) -> None:
        """Mark the trial's run (Optuna state; see :func:`ended_run_name`) and log the study's
        best value so far on the parent run (step = trial number)."""
        best = best_score(study)
        self.log(trial_line(trial, best))
        counts = _count(study)
        self.emit({"kind": "trial_end", "number": trial.number, "state": trial.state.name.lower(), "value": trial.value, "best": best,
                   "done": counts["finished"] + counts["failed_counted"], "total": self.spec.total_trials})
        try:
            run_id = trial.user_attrs.get(ATTR_RUN)
            if run_id:
                self.tracker.set_tags(run_id, {TAG_PREFIX + "optuna_state": trial.state.name})
                ended = ended_run_name(trial)
                if ended is not None:
                    self.tracker.rename(run_id, ended)
            if best is not None:
                self.tracker.log_metrics(self.spec.parent_run_id, {METRIC_SWEEP_BEST: best}, step=trial.number)
        except Exception as exc:  # the trial's result is safe in Optuna; MLflow can miss a point
            self.log(f"could not update MLflow after trial {trial.number}: {exc}")


def _run_processes(spec: SweepSpec, workers: int, log: Callable[[str], None]) -> None:
    """N worker processes (spawned: TensorFlow and MLflow are not fork/thread-safe)."""
    context = multiprocessing.get_context("spawn")
    procs = []
    for index in range(workers):
        worker_spec = dataclasses.replace(spec, worker=index + 1)
        proc = context.Process(target=_worker_main, args=(worker_spec,), name=f"flower-exp-worker-{index + 1}")
        proc.start()
        procs.append(proc)
    log(f"started {workers} worker processes: {', '.join(str(p.pid) for p in procs)}")
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt as exc:
        # A terminal's Ctrl-C (or a SIGTERM to the whole group) reached the workers too and they
        # are marking their trials; a signal sent to this process alone did not: pass it on (a
        # worker ignores a second one).
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                try:
                    os.kill(proc.pid, getattr(exc, "signum", signal.SIGINT))
                except ProcessLookupError:
                    pass
        deadline = time.time() + 30
        for proc in procs:
            proc.join(max(0.1, deadline - time.time()))
            if proc.is_alive():
                # SIGTERM would be ignored as a second stop signal; the next sweep fails its
                # trial through the heartbeat.
                proc.kill()
        raise
    killed = [p for p in procs if p.exitcode is not None and p.exitcode < 0]
    if killed:  # its trial was retried by another worker (or is by the next sweep)
        log(f"{len(killed)} worker(s) killed: {', '.join(f'{p.name} (signal {-p.exitcode})' for p in killed)}")
    failed = [p for p in procs if p.exitcode is not None and p.exitcode > 0]
    if failed:
        # A worker stopped by a bad configuration or damaged data must not leave a sweep that
        # exits 0 (its own line, above, says why).
        raise FlowerExpError(
            f"{len(failed)} of {workers} worker(s) stopped with an error: "
            f"{', '.join(f'{p.name} (exit {p.exitcode})' for p in failed)}; see their messages above"
        )


def _worker_main(spec: SweepSpec) -> None:
    import sys

    _stop_when_parent_exits()
    try:
        run_worker(spec, log=lambda m: print(m, flush=True))
    except KeyboardInterrupt as exc:
        sys.exit(exit_status(exc))
    except FlowerExpError as exc:
        print(f"[worker {spec.worker}] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _stop_when_parent_exits() -> None:
    """A worker whose sweep process is gone, even SIGKILLed, stops as on SIGTERM (its trial and
    run marked) instead of starting trials nobody waits for. A daemon thread waits on the spawn
    pipe from the parent, whose end the kernel closes when the parent exits."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        # The signal handler raises in the main thread, where the trial runs.
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="flower-exp-parent-watch", daemon=True).start()


# --------------------------------------------------------------------------- MLflow parent run


def _wait_for_parent(study, timeout_s: float) -> None:
    """Give the process that just created ``study`` time to record its parent run (it enqueues
    first), so that every process joins that run instead of starting its own."""
    deadline = time.time() + timeout_s
    while study.user_attrs.get(ATTR_PARENT) is None and time.time() < deadline:
        time.sleep(0.5)


def _parent_run(
    study, tracker: Tracker, name: str, storage_url: str, sweep_cfg: SweepConfig, total: int, overrides: Sequence[str] = ()
) -> str:
    """The study's parent run: reused when it exists (resume), created otherwise; its params
    record the search, the fixed settings (``--set`` included) and the ``--set`` as given."""
    run_id = study.user_attrs.get(ATTR_PARENT)
    if run_id is not None:
        try:
            run = tracker.client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                if run.info.status != "RUNNING":
                    tracker.client.update_run(run_id, status="RUNNING")
                tracker.set_tags(run_id, {TAG_STATE: "running"})
                return run_id
        except Exception:  # deleted or from another tracking store: start a new parent
            pass
    run_id = tracker.start(
        name, {TAG_KIND: "sweep", TAG_SWEEP: name, TAG_STUDY: name, TAG_PREFIX + "storage": redact(storage_url), TAG_STATE: "running"}
    )
    tracker.log_params(
        run_id,
        {
            "study": name,
            "storage": storage_url,
            "sampler": sweep_cfg.sampler.model_dump_json(),
            "pruner": sweep_cfg.pruner.model_dump_json(),
            "trials": total,
            "search_space": json.dumps({k: v.model_dump(exclude_none=True) for k, v in sweep_cfg.params.items()}),
            "fixed": json.dumps(sweep_cfg.fixed, default=str),
            "set": json.dumps(list(overrides)),
        },
    )
    study.set_user_attr(ATTR_PARENT, run_id)
    return run_id


def _finish_parent(study, tracker: Tracker, parent: str, total: int, log: Callable[[str], None]) -> None:
    import tempfile

    from .sweep_report import write_report

    counts = _count(study)
    metrics = {f"trials_{k}": v for k, v in counts.items() if k != "failed_counted"}
    scored = scored_trials(study)
    if scored:
        value, trial = scored[0]
        metrics[METRIC_SWEEP_BEST_FINAL] = value
        tracker.set_tags(parent, {TAG_PREFIX + "best_trial": str(trial.number),
                                  TAG_PREFIX + "best_run_id": str(trial.user_attrs.get(ATTR_RUN, ""))})
    tracker.log_metrics(parent, metrics)
    with tempfile.TemporaryDirectory(prefix="flower-exp-sweep-") as tmp:
        try:
            write_report(study, tmp)
            tracker.log_artifact(parent, tmp, "optuna")
        except Exception as exc:  # plots are a convenience; the study and runs are what matter
            log(f"could not write the Optuna report: {type(exc).__name__}: {exc}")
    done = counts["finished"] >= total
    tracker.set_tags(parent, {TAG_STATE: "finished" if done else "incomplete"})
    tracker.end(parent, "FINISHED")


# --------------------------------------------------------------------------- summaries


def trial_line(trial: Any, best: float | None) -> str:
    """The sweep's one-line summary of a finished trial (an Optuna ``FrozenTrial``)."""
    state = trial.state.name.lower()
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    if state == "pruned" and trial.user_attrs.get(ATTR_STOPPED_BY) == "budget":
        state = "stopped by the budget"
        value = f" at epoch {trial.user_attrs.get('epochs_run', '?')}, best val_macro_f1 {_trial_best(trial):.4f}"
    elif state == "pruned":
        # Optuna's value of a pruned trial is its last report, not the run's best epoch.
        last = f", last val_macro_f1{value}" if value else ""
        value = f" at epoch {trial.user_attrs.get('epochs_run', '?')}{last}"
    return f"trial {trial.number} {state}{value}; best so far {'-' if best is None else f'{best:.4f}'}"


def ended_run_name(trial: Any) -> str | None:
    """The new name of a PRUNED trial's run, ``trial-3 (pruned at 6)`` or ``trial-3 (stopped at
    6)`` (by the budget; 6: epochs run); None for other states.

    MLflow's status of such a run stays FINISHED (it saved a model), and the state tag is not a
    column of the MLflow UI's runs table until chosen; the name is always shown."""
    from optuna.trial import TrialState

    if trial.state != TrialState.PRUNED:
        return None
    how = "stopped" if trial.user_attrs.get(ATTR_STOPPED_BY) == "budget" else "pruned"
    return f"trial-{trial.number} ({how} at {trial.user_attrs.get('epochs_run', '?')})"


def _trial_best(trial: Any) -> float:
    """The best epoch score a trial reported (a pruned trial's value is its last report)."""
    return max(trial.intermediate_values.values(), default=float("nan"))


def _count(study) -> dict[str, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
    }
    counts["finished"] = counts["complete"] + counts["pruned"]
    # A trial that failed on its own (NaN loss, out of memory) uses up budget; one whose worker
    # died does not (its retry will run), nor one whose configuration was invalid (the sweep stopped).
    counts["failed_counted"] = sum(t.state == TrialState.FAIL and ATTR_FAIL in t.user_attrs for t in trials)
    return counts


def scored_trials(study) -> list[tuple[float, Any]]:
    """(score, trial) of every trial that produced a model worth using, best first: COMPLETE
    trials by their value, and trials the budget stopped by their best epoch (Optuna keeps
    them PRUNED, whose value would be the last epoch's)."""
    return scored(study.get_trials(deepcopy=False))


def scored(trials: list[Any]) -> list[tuple[float, Any]]:
    """:func:`scored_trials` of a list of Optuna ``FrozenTrial``s."""
    from optuna.trial import TrialState

    pairs = []
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            pairs.append((t.value, t))
        elif t.user_attrs.get(ATTR_STOPPED_BY) == "budget" and t.intermediate_values:
            pairs.append((_trial_best(t), t))
    pairs.sort(key=lambda pair: pair[0], reverse=True)
    return pairs


def _next_to_continue(study) -> Any:
    """The best scored trial (a continuation included: it trains on again) that has a model and
    that no continuation has started from yet; None when there is none."""
    claimed = {t.user_attrs.get(ATTR_CONTINUES) for t in study.get_trials(deepcopy=False)}
    return next((t for _score, t in scored_trials(study) if t.number not in claimed and t.user_attrs.get(ATTR_RUN)), None)


def best_score(study) -> float | None:
    """The study's best score (see :func:`scored_trials`); None before any."""
    scored = scored_trials(study)
    return scored[0][0] if scored else None


def top_trials(study, n: int) -> list[dict[str, Any]]:
    """The ``n`` best trials of :func:`scored_trials`, best first; ``state`` is ``complete`` or
    ``stopped`` (by the budget)."""
    return [
        {"number": t.number, "value": value, "params": dict(t.params), "run_id": t.user_attrs.get(ATTR_RUN, ""),
         "best_epoch": t.user_attrs.get("best_epoch"), "stopped_by": t.user_attrs.get(ATTR_STOPPED_BY),
         "state": "stopped" if t.user_attrs.get(ATTR_STOPPED_BY) == "budget" else "complete"}
        for value, t in scored_trials(study)[:n]
    ]


def study_status(
    *, experiment: str | None = None, sweep: str | None = None, study_name: str | None = None,
    storage: str | None = None, config: str | os.PathLike | None = None, top: int = 5,
) -> dict[str, Any]:
    """Trials by state, the ``top`` best trials (:func:`top_trials`; ``best`` is the first),
    the parent MLflow run (no TensorFlow)."""
    import optuna

    if top < 1:
        raise FlowerExpError(f"--top {top}: must be >= 1")
    if study_name is not None:
        check_study_name(study_name)
    config_path = find_config(config)
    storage_url = storage or default_storage_url(config_path)
    if storage is None and not Path(storage_url).exists():
        raise FlowerExpError(f"no sweeps yet ({storage_url} does not exist); start one with: flower-exp sweep")
    store = open_storage(storage_url, HeartbeatConfig(), readonly=True)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    if study_name is None:
        exp = load_experiment(experiment, config_path)
        sweep_path = find_sweep_file(sweep, config_path)
        study_name = _default_study_name(exp.name, sweep_path)
    if study_name not in summaries:
        allowed = ", ".join(summaries) or "(none)"
        raise FlowerExpError(f"study {study_name!r}: not found in {redact(storage_url)}; studies there: {allowed}")
    study = optuna.load_study(study_name=study_name, storage=store)
    counts = _count(study)
    counts.pop("failed_counted")
    top_list = top_trials(study, top)
    return {
        "study": study_name,
        "storage": redact(storage_url),
        "counts": counts,
        "best": next(iter(top_list), None),
        "top": top_list,
        "parent_run_id": study.user_attrs.get(ATTR_PARENT),
    }


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if (value == 0 or 1e-3 <= abs(value) < 1e4) and not math.isnan(value) else f"{value:.2e}"
    return str(value)
