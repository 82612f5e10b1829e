"""MLflow conventions (docs/architecture.md): where runs go, how they are named, tagged and closed.

Default store ``sqlite:///<project>/mlruns/mlflow.db`` with artifacts under
``<project>/mlruns/artifacts`` — set explicitly, because MLflow 3 refuses the old ``./mlruns``
file store and would otherwise put ``mlflow.db`` wherever the command runs.
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. One MLflow experiment per
flower-exp experiment. Everything goes through an explicit ``MlflowClient`` and run ids, not
the fluent "active run" state, so several runs in one process never mix.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FlowerExpError, RecordingFailed

# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out so this module imports without MLflow.
MLFLOW_SOURCE_TYPE = "mlflow.source.type"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_GIT_DIRTY = "mlflow.source.git.dirty"
TAG_PREFIX = "flower_exp."
TAG_STATE = TAG_PREFIX + "state"  # finished | pruned | stopped | failed | killed (sweep parents: also running, incomplete)
TAG_ERROR = TAG_PREFIX + "error"
TAG_KIND = TAG_PREFIX + "kind"  # train | trial | sweep | refit | ensemble | export
TAG_STUDY = TAG_PREFIX + "study"
TAG_SUGGESTED = TAG_PREFIX + "suggested"  # a trial's suggested values, JSON in search-space order
# MLflow 3's UI opens an experiment without this tag as GenAI (traces, token usage); ours train models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A trial logs each searched value twice: under its own name among every setting, and under
# this prefix, so that the MLflow UI lists the searched ones together (easy to pick as columns).
SEARCH_PARAM_PREFIX = "search."
MAX_PARAM_LENGTH = 6000
# MLflow retries an unreachable server for ~2 minutes per call (7 retries, backoff factor 2);
# a sweep makes several calls per epoch. flower-exp bounds that (~15 s per call) unless the
# user set MLflow's variables; FLOWER_EXP_TRACKING_RETRIES / _TIMEOUT_S change its defaults.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": ("FLOWER_EXP_TRACKING_RETRIES", "4"),
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": ("FLOWER_EXP_TRACKING_BACKOFF_FACTOR", "1"),
    "MLFLOW_HTTP_REQUEST_TIMEOUT": ("FLOWER_EXP_TRACKING_TIMEOUT_S", "30"),
}
PROBE_TIMEOUT_S = 5.0
# MLflow errors that are about the request, not about the store being reachable.
_CLIENT_ERROR_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "BAD_REQUEST",
    "MALFORMED_REQUEST",
    "INVALID_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs are written."""

    uri: str
    artifact_root: str | None  # None: let the server decide (remote tracking servers)


def default_target(project_dir: str | os.PathLike, uri: str | None = None) -> TrackingTarget:
    """The tracking store for a project: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the
    local sqlite store under ``<project_dir>/mlruns``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        local = uri.startswith("sqlite:") or uri.startswith("file:")
        return TrackingTarget(uri, str(Path(project_dir, "mlruns", "artifacts").resolve()) if local else None)
    root = Path(project_dir, "mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return TrackingTarget(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))


def redact(text: str) -> str:
    """Hide the password in URLs such as ``postgresql://user:secret@host/db``."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


class Tracker:
    """Runs of one MLflow experiment."""

    def __init__(self, target: TrackingTarget, experiment: str):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()

        self.target = target
        self._down = False
        bound_http_retries()
        prepare_store(target)
        _check_server(target.uri)
        try:
            self.client = MlflowClient(tracking_uri=target.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = Path(target.artifact_root, experiment).as_uri() if target.artifact_root else None
                try:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                    )
                except Exception:
                    # Another process (a second machine starting the same sweep) created it just now.
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    self.experiment_id = found.experiment_id
            else:
                self.experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older flower-exp or by hand
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as exc:
            if isinstance(exc, FlowerExpError):
                raise
            raise _store_unavailable(target.uri, exc) from None
        self.experiment = experiment

    def start(self, run_name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> str:
        """Create a RUNNING run and return its id."""
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self._call(self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params (values stringified, credentials redacted, long values cut)."""
        from mlflow.entities import Param

        items = [Param(k, redact(_param_value(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._call(self.client.log_batch, run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (non-finite values are skipped)."""
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        if items:
            self._call(self.client.log_batch, run_id, metrics=items)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a run."""
        for key, value in tags.items():
            self._call(self.client.set_tag, run_id, key, redact(str(value))[:5000])

    def log_dataset(self, run_id: str, dataset: DatasetRecord) -> None:
        """Record the data a run read as an MLflow dataset input (the UI's Dataset column)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        entity = Dataset(
            name=dataset.name,
            digest=dataset.digest,
            source_type=dataset.source_type,
            source=json.dumps({"uri": redact(dataset.source)}),
            profile=json.dumps(dataset.profile),
        )
        tag = InputTag(key="mlflow.data.context", value=dataset.context)
        self._call(self.client.log_inputs, run_id, datasets=[DatasetInput(entity, tags=[tag])])

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        """Upload a file or folder."""
        upload = self.client.log_artifacts if os.path.isdir(path) else self.client.log_artifact
        self._call(upload, run_id, path, artifact_path, where=lambda: self._artifact_location(run_id))

    def download(self, run_id: str, artifact: str, folder: str) -> str:
        """A run's artifact as a local file under ``folder``; one line if it is gone."""
        os.makedirs(folder, exist_ok=True)
        try:
            return self.client.download_artifacts(run_id, artifact, folder)
        except Exception as exc:  # MLflow raises MlflowException or OSError depending on the store
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise FlowerExpError(
                f"run {run_id}: artifact {artifact} cannot be read ({reason}); its artifacts may have been deleted: "
                "rerun it or leave it out (--study, --top)"
            ) from None

    def _artifact_location(self, run_id: str) -> str:
        # An OSError names the file being copied; the user needs the folder that is full.
        try:
            uri = self.client.get_run(run_id).info.artifact_uri
        except Exception:  # noqa: BLE001 - only used to word an error
            return self.target.artifact_root or self.target.uri
        return uri.removeprefix("file://") if uri.startswith("file:///") else uri

    def search_runs(self, filter_string: str, order_by: Sequence[str] = (), max_results: int = 1000) -> list[Any]:
        """This experiment's active runs matching MLflow's ``filter_string``, sorted by ``order_by``
        (e.g. ``"metrics.best_val_macro_f1 DESC"``): the first ``max_results`` ``mlflow.entities.Run``."""
        # Reads are not wrapped in RecordingFailed (that says results went unrecorded): MLflow's
        # errors reach the caller as they are.
        return self.client.search_runs(
            [self.experiment_id], filter_string, max_results=max_results, order_by=list(order_by) or None
        )

    def get_run(self, run_id: str) -> Any:
        """The ``mlflow.entities.Run`` with id ``run_id``; MLflow's error if there is none."""
        return self.client.get_run(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's MLflow status without ending it (``RUNNING`` reopens a resumed sweep's
        parent run; :meth:`end` closes runs)."""
        self._call(self.client.update_run, run_id, status=status)

    def rename(self, run_id: str, name: str) -> None:
        """Change a run's name (the MLflow UI's "Run Name"), also after it ended."""
        self._call(self.client.update_run, run_id, name=name)

    def end(self, run_id: str, status: str) -> None:
        """Close a run with MLflow status FINISHED, FAILED or KILLED."""
        self._call(self.client.set_terminated, run_id, status)

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> Iterator[str]:
        """A run that is always closed: FINISHED, FAILED (error tagged) or KILLED on Ctrl-C/SIGTERM/SIGHUP.

        The body may set ``flower_exp.state`` (e.g. ``pruned``) before returning normally.
        """
        run_id = self.start(run_name, tags, parent_run_id)
        try:
            yield run_id
        except KeyboardInterrupt as exc:
            # errors.Interrupted names its signal; a plain KeyboardInterrupt is Ctrl-C.
            how = "Ctrl-C" if str(exc) in ("", "SIGINT") else str(exc)
            self._close_quietly(run_id, "KILLED", "killed", f"interrupted ({how})")
            raise
        except BaseException as exc:
            if isinstance(exc, RecordingFailed) and exc.unreachable:
                raise  # nothing to close it with; the sweep's retry of the trial closes it later
            reason = f"{type(exc).__name__}: {exc}".strip()
            self._close_quietly(run_id, "FAILED", "failed", reason.splitlines()[0][:1000] if reason else "")
            raise
        else:
            state = self._call(self.client.get_run, run_id).data.tags.get(TAG_STATE)
            if state is None:
                self.set_tags(run_id, {TAG_STATE: "finished"})
            self.end(run_id, "FINISHED")

    def close_orphan(self, run_id: str, reason: str) -> None:
        """Mark ``run_id`` FAILED with ``reason`` if it is still RUNNING (its process could not
        close it, e.g. the server was down); best effort."""
        try:
            if self._call(self.client.get_run, run_id).info.status == "RUNNING":
                self._close_quietly(run_id, "FAILED", "failed", reason)
        except Exception as exc:  # noqa: BLE001 - a missing or unreachable run stays as it is
            logging.getLogger(__name__).warning("could not close run %s: %s", run_id, exc)

    def _call(self, fn, *args, where: Callable[[], str] | None = None, **kwargs):
        """``fn(*args)`` against the store; failures to reach or write it become
        :class:`RecordingFailed` naming the store (after MLflow's bounded retries)."""
        if self._down:
            # The last call found the server down: ask /health (seconds) before another
            # round of retries, so that closing a run after an outage does not wait minutes.
            _check_server(self.target.uri, recording=True)
            self._down = False
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            place = where() if where else exc.filename or self.target.artifact_root or self.target.uri
            raise RecordingFailed(f"MLflow artifact store: cannot write {redact(str(place))} ({exc.strerror or exc})") from None
        except Exception as exc:
            if getattr(exc, "error_code", None) in _CLIENT_ERROR_CODES:
                raise
            reason = _reason(exc)
            unreachable = _is_http(self.target.uri)
            self._down = unreachable
            raise RecordingFailed(
                f"MLflow tracking store {redact(self.target.uri)}: unavailable ({reason})", unreachable
            ) from None

    def _close_quietly(self, run_id: str, status: str, state: str, reason: str) -> None:
        # The store may be what failed; closing must not hide the original error.
        try:
            tags = {TAG_STATE: state, **({TAG_ERROR: reason} if reason else {})}
            self.set_tags(run_id, tags)
            self.end(run_id, status)
        except Exception as exc:  # noqa: BLE001 - depends on a failing store
            logging.getLogger(__name__).warning("could not mark run %s %s: %s", run_id, status, exc)


@dataclass(frozen=True)
class DatasetRecord:
    """What a run read, as MLflow records a dataset input."""

    name: str
    digest: str  # changes when the data does (flower_exp.data.leakage.data_fingerprint)
    source: str  # the data folder (local path or gs:// URL)
    profile: dict[str, Any]  # split counts, classes, image size
    context: str  # training | refit

    @property
    def source_type(self) -> str:
        return "gcs" if self.source.startswith("gs://") else "local"


def source_tags(path: str | os.PathLike) -> dict[str, str]:
    """MLflow's standard source tags for a run of the project at ``path``: the runs table's
    Source column and, in a git checkout, the commit (``mlflow.source.git.dirty`` when modified)."""
    tags = {MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_SOURCE_NAME: "flower-exp"}
    commit = git_commit(path)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit.removesuffix("+dirty")
        tags[MLFLOW_GIT_DIRTY] = str(commit.endswith("+dirty")).lower()
    return tags


def git_commit(path: str | os.PathLike) -> str | None:
    """The git commit of ``path``'s checkout (``+dirty`` when modified), if it is one."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("flower-exp", "tensorflow", "tensorflow-cpu", "keras", "mlflow", "optuna", "efficientnet", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _check_local_store(uri: str) -> None:
    """Fail fast on a local sqlite store that cannot work (MLflow retries for ~2 minutes)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if path.is_dir():
        raise FlowerExpError(f"MLflow tracking store {uri}: {path} is a directory, expected a database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerExpError(f"MLflow tracking store {uri}: cannot create {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FlowerExpError(f"MLflow tracking store {uri}: {path} is not writable")


@contextmanager
def local_store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a local sqlite store (``<db>.lock`` beside it) while the block
    opens it; other URIs pass through.

    Why: the first process to open a fresh database creates and migrates its schema (MLflow's
    alembic migrations), and MLflow takes no lock for that. Two processes opening a new
    project's store at once (two terminals, a job array on one machine) interleave their
    migrations and leave a database that no later command can open ("table _alembic_tmp_...
    already exists"). Once a process has opened the store, MLflow keeps it for the process, so
    a later open in the process only checks the schema, in milliseconds.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; concurrent first opens stay unsafe there
        yield
        return
    path = Path(uri[len("sqlite:///") :])
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the block raises


def prepare_store(target: TrackingTarget) -> None:
    """Check ``target``'s local sqlite store and create or migrate it now, under
    :func:`local_store_lock` (before a :class:`Tracker` or another program, like ``mlflow ui``,
    uses it); a no-op for other stores."""
    if not target.uri.startswith("sqlite:///"):
        return
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    _check_local_store(target.uri)
    try:
        with local_store_lock(target.uri):
            MlflowClient(tracking_uri=target.uri).search_experiments(max_results=1)
    except Exception as exc:
        raise _store_unavailable(target.uri, exc) from None


def _store_unavailable(uri: str, exc: Exception) -> FlowerExpError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return FlowerExpError(f"MLflow tracking store {redact(uri)}: unavailable ({redact(first)})")


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry variables to flower-exp's bounded defaults where unset."""
    for mlflow_var, (own_var, default) in HTTP_RETRY_DEFAULTS.items():
        if mlflow_var not in os.environ:
            os.environ[mlflow_var] = os.environ.get(own_var, default)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _check_server(uri: str, recording: bool = False) -> None:
    """Fail in seconds when an http(s) tracking server does not answer at all (MLflow's own
    retries would take minutes). Any HTTP answer, even an error status, counts as reachable."""
    if not _is_http(uri):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or str(reason)
    message = f"MLflow tracking server {redact(uri)}: unreachable ({reason}); start it or pass another --tracking-uri"
    raise (RecordingFailed(message, unreachable=True) if recording else FlowerExpError(message))


def _reason(exc: BaseException) -> str:
    """The useful part of an MLflow error: '[Errno 111] Connection refused' rather than the
    whole urllib3 retry chain."""
    text = str(exc).strip()
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found.group(0).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    return redact(first)


def _param_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _quiet_mlflow() -> None:
    # After importing mlflow: its import configures the "mlflow" logger at INFO.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # One "Retrying ..." warning per attempt would bury the single line that says what failed.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@dataclass(frozen=True)
class SweepOverview:
    """An experiment of a store and its latest sweep, as ``flower-exp ui`` links them."""

    experiment: str
    experiment_id: str
    study: str | None  # the latest sweep's study; None: the experiment has no sweep
    parent_run_id: str | None
    trial_run_ids: list[str]  # that sweep's trials that trained (best first)


def sweep_overviews(target: TrackingTarget, metric: str = "best_val_macro_f1") -> list[SweepOverview]:
    """Every active experiment of ``target`` that has runs, with its most recently started
    sweep and that sweep's trained trials ordered by ``metric`` (read-only: creates nothing)."""
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    bound_http_retries()
    _check_server(target.uri)
    try:
        client = MlflowClient(tracking_uri=target.uri)
        out = []
        for exp in client.search_experiments(order_by=["name ASC"]):
            runs = client.search_runs([exp.experiment_id], max_results=1)
            if not runs:
                continue
            parents = client.search_runs(
                [exp.experiment_id], f"tags.`{TAG_KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
            )
            if not parents:
                out.append(SweepOverview(exp.name, exp.experiment_id, None, None, []))
                continue
            parent = parents[0]
            trials = client.search_runs(
                [exp.experiment_id],
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{TAG_KIND}` = 'trial'",
                order_by=[f"metrics.`{metric}` DESC"],
                max_results=1000,
            )
            trained = [r.info.run_id for r in trials if metric in r.data.metrics]
            out.append(SweepOverview(exp.name, exp.experiment_id, parent.data.tags.get(TAG_STUDY), parent.info.run_id, trained))
        return out
    except Exception as exc:
        if isinstance(exc, FlowerExpError):
            raise
        raise _store_unavailable(target.uri, exc) from None
