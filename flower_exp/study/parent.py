"""The study's MLflow parent run: created once per study (or reused on resume), ended KILLED or
FAILED when the sweep stops early, and finished with the study's counts, best trial and the
Optuna report."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from ..config import SweepConfig
from ..tracking import TAG_ERROR, TAG_KIND, TAG_PREFIX, TAG_STATE, TAG_STUDY, Tracker, redact
from .names import ATTR_PARENT, ATTR_RUN, METRIC_SWEEP_BEST_FINAL, TAG_SWEEP
from .scoring import _count, scored_trials

# How long a process joining a just-created study waits for its creator's MLflow parent run.
PARENT_WAIT_S = 30.0


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
            run = tracker.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                if run.info.status != "RUNNING":
                    tracker.set_status(run_id, "RUNNING")
                tracker.set_tags(run_id, {TAG_STATE: "running"})
                return run_id
        except Exception:  # deleted or from another tracking store: start a new parent
            pass
    run_id = tracker.start(
        name,
        {TAG_KIND: "sweep", TAG_SWEEP: name, TAG_STUDY: name, TAG_PREFIX + "storage": redact(storage_url), TAG_STATE: "running"},
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


@contextlib.contextmanager
def _end_parent_on_stop(tracker: Tracker, parent: str) -> Iterator[None]:
    """Around the trials: a sweep stopped by Ctrl-C or a signal ends its parent run KILLED, one
    stopped by an error FAILED with the reason."""
    try:
        yield
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


def log_report(study, tracker: Tracker, parent: str, log: Callable[[str], None]) -> None:
    """Write the Optuna report (plots, ``trials.csv``, ``report.txt``) as the parent run's
    ``optuna/`` artifacts, replacing the previous one."""
    from ..sweep_report import write_report

    with tempfile.TemporaryDirectory(prefix="flower-exp-sweep-") as tmp:
        try:
            write_report(study, tmp)
            tracker.log_artifact(parent, tmp, "optuna")
        except Exception as exc:  # plots are a convenience; the study and runs are what matter
            log(f"could not write the Optuna report: {type(exc).__name__}: {exc}")


def _finish_parent(study, tracker: Tracker, parent: str, total: int, log: Callable[[str], None]) -> None:
    """End the parent run FINISHED (state ``finished``, or ``incomplete`` short of ``total``)
    with the trial counts, the best trial and the Optuna report (``optuna/``)."""
    counts = _count(study)
    metrics = {f"trials_{k}": v for k, v in counts.items() if k != "failed_counted"}
    scored = scored_trials(study)
    if scored:
        value, trial = scored[0]
        metrics[METRIC_SWEEP_BEST_FINAL] = value
        tracker.set_tags(
            parent,
            {TAG_PREFIX + "best_trial": str(trial.number), TAG_PREFIX + "best_run_id": str(trial.user_attrs.get(ATTR_RUN, ""))},
        )
    tracker.log_metrics(parent, metrics)
    log_report(study, tracker, parent, log)
    done = counts["finished"] >= total
    tracker.set_tags(parent, {TAG_STATE: "finished" if done else "incomplete"})
    tracker.end(parent, "FINISHED")
