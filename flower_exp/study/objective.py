"""One trial: :class:`_Objective` turns Optuna's suggestion into a configuration, trains it as
the study's child run with the pruner watching every epoch, and decides what its failure means
for the sweep. With ``continue_best`` and a budget it also runs the end of the sweep: the best
trials train on from their best epoch instead of new configurations starting."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..budget import Deadline
from ..config import ExperimentConfig, ResolvedExperiment, SweepConfig, apply_values, resolve
from ..errors import ConfigError, DataError, FlowerExpError, RecordingFailed
from ..tracking import SEARCH_PARAM_PREFIX, TAG_KIND, TAG_PREFIX, TAG_STUDY, TAG_SUGGESTED, Tracker
from .names import (
    ATTR_CONFIG_ERROR,
    ATTR_CONTINUES,
    ATTR_FAIL,
    ATTR_NOT_RECORDED,
    ATTR_RETRY_OF,
    ATTR_RUN,
    ATTR_STOPPED_BY,
    ATTR_UNRECORDED_RUN,
    METRIC_SWEEP_BEST,
    TAG_SWEEP,
    TAG_TRIAL,
)
from .options import SweepSpec
from .parent import log_report
from .sampling import suggest
from .scoring import _count, best_score, ended_run_name, scored, scored_trials, trial_line

# A running sweep's Optuna report in MLflow is refreshed after a trial when it is older than
# this (per worker); the sweep's end writes the final one.
REPORT_REFRESH_S = 300.0


class _Objective:
    """What ``study.optimize`` calls for each trial of one worker, with ``after_trial`` as its
    callback; it keeps what the worker loop needs between trials (failures in a row, an error
    that stops the sweep, the times the budget is judged by)."""

    def __init__(self, spec: SweepSpec, exp: ResolvedExperiment, sweep_cfg: SweepConfig, tracker: Tracker, log, emit):
        self.spec, self.exp, self.sweep_cfg, self.tracker, self.log, self.emit = spec, exp, sweep_cfg, tracker, log, emit
        self.consecutive_failures = 0
        self.stop: FlowerExpError | None = None
        self._reported = time.monotonic()  # when this worker last refreshed the parent's Optuna report
        # Measured on this worker's trials, for the budget: the longest time from the end of
        # training to the end of a run, and the longest a trial took to reach the epoch at
        # which the pruner first judges it, plus that finishing time. With less than that left
        # no trial starts: one that cannot get that far would only add noise to the study.
        self.finish_reserve_s: float | None = None
        self.shortest_trial_s = 0.0
        self.full_trial_s = 0.0  # the longest trial that ran all its epochs (for continue_best)
        self.judged_at_epoch = max(
            1,
            sweep_cfg.pruner.min_resource
            if sweep_cfg.pruner.name == "hyperband"
            else sweep_cfg.pruner.n_warmup_steps + 1
            if sweep_cfg.pruner.name == "median"
            else 1,
        )

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
            f"trial {trial.number}: result not recorded, marked FAILED and queued again; rerun the same command once fixed: {exc}"
        )
        self.log(f"trial {trial.number} failed: {exc}")

    def _run(self, trial) -> float:
        import optuna

        from ..train import Pruned, run

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
        self.log(
            f"trial {trial.number}: continues trial {continues} from its best epoch, lr_max {_short(cfg.lr_max)}"
            if continues is not None
            else f"trial {trial.number}: {shown}"
        )
        self.emit({"kind": "trial_start", "number": trial.number, "epochs": cfg.epochs})
        started = time.time()
        judged_s: list[float] = []  # seconds from the start to the pruner's first judgement
        trial_best = [-math.inf]

        def report(epoch: int, value: float) -> None:
            if epoch == min(self.judged_at_epoch, cfg.epochs):
                judged_s.append(time.time() - started)
            trial_best[0] = max(trial_best[0], value)
            event = {
                "kind": "epoch",
                "number": trial.number,
                "epoch": epoch,
                "epochs": cfg.epochs,
                "value": value,
                "trial_best": trial_best[0],
            }
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
        self.emit(
            {
                "kind": "trial_end",
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "best": best,
                "done": counts["finished"] + counts["failed_counted"],
                "total": self.spec.total_trials,
            }
        )
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
        # The parent run's Optuna plots follow a running sweep, at most every REPORT_REFRESH_S
        # per worker: drawing them takes seconds, which every trial would otherwise pay.
        if time.monotonic() - self._reported >= REPORT_REFRESH_S:
            log_report(study, self.tracker, self.spec.parent_run_id, self.log)
            self._reported = time.monotonic()


def _next_to_continue(study) -> Any:
    """The best scored trial (a continuation included: it trains on again) that has a model and
    that no continuation has started from yet; None when there is none."""
    claimed = {t.user_attrs.get(ATTR_CONTINUES) for t in study.get_trials(deepcopy=False)}
    return next((t for _score, t in scored_trials(study) if t.number not in claimed and t.user_attrs.get(ATTR_RUN)), None)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if (value == 0 or 1e-3 <= abs(value) < 1e4) and not math.isnan(value) else f"{value:.2e}"
    return str(value)
