"""The workers: :func:`run_worker` runs trials until the study has its total (safe in many
processes against one storage), and ``--workers N`` spawns N processes running it, each of
which stops when its sweep process is gone."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..config import ResolvedExperiment, SweepConfig, load_experiment
from ..errors import FlowerExpError
from ..signals import exit_status, interrupt_once
from ..tracking import Tracker
from .names import ATTR_CONTINUES, ATTR_FAIL
from .objective import _next_to_continue, _Objective
from .options import SweepSpec
from .sampling import make_pruner, make_sampler
from .scoring import _count, scored_trials
from .start import _checked_sweep
from .storage import StaleTrialHandler, open_storage

# A sweep whose every trial fails (broken data, missing weights) stops instead of burning budget.
MAX_CONSECUTIVE_FAILURES = 5


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
