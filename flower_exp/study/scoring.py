"""Summaries of a study's trials: counts by state, scores (a trial the budget stopped by its
best epoch), the best trials, and the line and run name a finished trial gets."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from .names import ATTR_FAIL, ATTR_RUN, ATTR_STOPPED_BY


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


def best_score(study) -> float | None:
    """The study's best score (see :func:`scored_trials`); None before any."""
    scored = scored_trials(study)
    return scored[0][0] if scored else None


@dataclass(frozen=True)
class TrialSummary:
    """One scored trial as ``status`` and the end of a sweep show it."""

    number: int
    value: float  # its best val_macro_f1 (a stopped trial's best epoch)
    params: dict[str, Any]
    run_id: str  # its MLflow run ("" when none was recorded)
    best_epoch: int | None
    state: str  # complete | stopped (by the budget)


def top_trials(study, n: int) -> list[TrialSummary]:
    """The ``n`` best trials of :func:`scored_trials`, best first."""
    return [
        TrialSummary(
            number=t.number,
            value=value,
            params=dict(t.params),
            run_id=t.user_attrs.get(ATTR_RUN, ""),
            best_epoch=t.user_attrs.get("best_epoch"),
            state="stopped" if t.user_attrs.get(ATTR_STOPPED_BY) == "budget" else "complete",
        )
        for value, t in scored_trials(study)[:n]
    ]
