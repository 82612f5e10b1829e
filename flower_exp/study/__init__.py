"""The sweep: an Optuna study whose trials are tracked training runs.

Optuna proposes a configuration, :func:`flower_exp.train.run` trains it as a nested MLflow
child run under one parent run per study, and the pruner sees ``val_macro_f1`` after every
epoch. The study lives in Optuna storage (a journal file under ``mlruns/optuna/`` by default,
any Optuna storage URL with ``--storage``), so rerunning the same command resumes it, several
processes or machines can share it, and a trial whose worker died is retried (heartbeats).

:func:`run_sweep` below is the whole sweep in order; its steps live in the modules beside it:
``start`` (options checked, storage, study, parent run), ``workers`` (the trial loop, in this
process or spawned ones), ``objective`` (one trial) and ``parent`` (the parent run's end). They
share ``options`` (the data), ``storage``, ``sampling``, ``scoring`` and ``names``; ``status``
is ``flower-exp status``.

(This package is ``study`` rather than ``sweep`` because ``flower_exp.sweep`` is the public
function of the Python API; a submodule of that name would shadow it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..signals import interrupt_once
from .options import SweepOptions, SweepResult
from .parent import _end_parent_on_stop, _finish_parent
from .sampling import make_pruner
from .scoring import TrialSummary, _count, top_trials
from .start import start_sweep
from .status import StudyStatus, study_status
from .storage import default_storage_url, open_storage
from .workers import _run_processes, run_worker

# The entry points of the CLI and the public API, and the storage and pruner helpers the
# benchmarks build their own studies with.
__all__ = [
    "StudyStatus",
    "SweepOptions",
    "SweepResult",
    "TrialSummary",
    "default_storage_url",
    "make_pruner",
    "open_storage",
    "run_sweep",
    "run_worker",
    "study_status",
]


def run_sweep(
    options: SweepOptions,
    *,
    log: Callable[[str], None] = print,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep until the study has ``options.trials`` finished or pruned trials.

    Rerunning with the same options resumes: finished trials are kept, the MLflow parent run is
    reused and ``trials`` counts the total. ``new`` refuses to replace an existing study unless
    ``force``. ``timeout_min``: no trial starts after that many minutes; ``budget_min``: the
    sweep is over by then, the running trial stopped at an epoch boundary (kept as PRUNED with
    ``stopped_by: budget``, its best epoch saved). ``on_event`` receives progress events of
    in-process trials (``trial_start``, ``epoch``, ``trial_end``) for a live display; ``log``
    gets text lines. ``overrides`` are ``--set KEY=VALUE`` strings: parsed and validated like
    ``train --set``, applied to the experiment and held fixed in every trial over the sweep
    file's ``fixed`` (a searched key is refused); the parent run records them.
    """
    import optuna

    started = start_sweep(options, log)
    spec, tracker = started.spec, started.tracker
    with interrupt_once(), _end_parent_on_stop(tracker, spec.parent_run_id):
        if options.workers == 1:
            run_worker(
                spec,
                study=started.study,
                exp=started.exp,
                sweep_cfg=started.sweep_cfg,
                tracker=tracker,
                log=log,
                on_event=on_event,
            )
        else:
            _run_processes(spec, options.workers, log)
    study = optuna.load_study(study_name=spec.study_name, storage=started.store)
    _finish_parent(study, tracker, spec.parent_run_id, spec.total_trials, log)
    return SweepResult(
        study_name=spec.study_name,
        storage_url=spec.storage_url,
        parent_run_id=spec.parent_run_id,
        experiment=spec.experiment,
        counts=_count(study),
        best=top_trials(study, 5),
    )
