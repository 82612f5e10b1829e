"""Where a sweep's study lives: the sweep file, the study's default name, the Optuna storage (a
journal file with heartbeats, or an RDB) and what happens to a trial whose worker died."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import HeartbeatConfig, check_study_name, project_dir
from ..errors import FlowerExpError
from ..tracking import TAG_PREFIX, TAG_STATE, TAG_STUDY, Tracker, TrackingTarget, redact
from .names import ATTR_RETRY_OF, ATTR_RUN, TAG_TRIAL

# The journal's heartbeat: a running trial's latest time.time(), a system attr (see _journal_with_heartbeat).
HEARTBEAT_ATTR = "flower_exp:heartbeat"
DEFAULT_SWEEP = "demo"


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


def _default_study_name(experiment: str, sweep_path: Path) -> str:
    """``<experiment>-<sweep file stem>``, checked like a ``--study`` name."""
    return check_study_name(
        f"{experiment}-{sweep_path.stem}", f"study name of -e {experiment} -s {sweep_path.stem} (choose one with --study):"
    )


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
        raise FlowerExpError(
            f"--storage {url}: an in-memory database is lost when the sweep exits; "
            "use a file (sqlite:///mlruns/optuna.db) or the default journal"
        )


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
        from ..journal import open_journal

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
                found = tracker.search_runs(
                    f"tags.`{TAG_STUDY}` = '{study.study_name}' and tags.`{TAG_TRIAL}` = '{trial.number}' "
                    "and attributes.status = 'RUNNING'",
                )
                run_id = found[0].info.run_id if found else None
            if run_id is not None:
                tracker.set_tags(
                    run_id, {TAG_STATE: "failed", TAG_PREFIX + "error": "worker died (no heartbeat); trial re-queued"}
                )
                tracker.end(run_id, "FAILED")
        except FlowerExpError:
            pass  # the store is down: the trial is still re-queued below
        # The retry inherits user attrs: say which trial (and run) it replaces.
        trial.user_attrs = {**trial.user_attrs, ATTR_RETRY_OF: trial.user_attrs.get(ATTR_RETRY_OF, trial.number)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)
