"""Sweep report: Optuna's plots and a CSV of all trials, for the sweep's MLflow parent run.

:func:`write_report` draws each plot twice: as a PNG (``optuna.visualization.matplotlib``,
Agg) and as an interactive figure (``optuna.visualization``) on one self-contained HTML page,
``plots.html``, with plotly.js embedded once so it opens offline (~4.8 MB; a page per plot
would repeat the library in each). It also writes ``trials.csv`` and a ``report.txt`` that
says what was skipped and why.
Every plot is attempted on its own: a study too small for a plot (no completed trial yet, one
trial for parameter importances) loses that plot, never the report.

:func:`best_so_far` gives the stepped best-so-far series of COMPLETE trials (the parent run's
``sweep_best_val_macro_f1`` also counts trials the budget stopped).

Optuna, matplotlib and plotly are imported inside the functions: importing this module is
free, so ``flower-exp --help`` stays instant.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from optuna.trial import FrozenTrial

TRIALS_CSV = "trials.csv"
REPORT_TXT = "report.txt"
PLOTS_HTML = "plots.html"
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
FORMATS = ("png", "html")

# Leading columns of trials.csv; params_*, user_attrs_*, system_attrs_* and anything else
# follow, each group sorted by name, so the column order does not depend on trial order.
_LEADING_COLUMNS = ("number", "state", "value", "datetime_start", "datetime_complete", "duration")
_GROUP_PREFIXES = ("params_", "user_attrs_", "system_attrs_")

_PLOTLY_HINT = "plotly is not installed (pip install 'plotly>=6,<8'); HTML plots need it"
_MATPLOTLIB_HINT = "matplotlib is not installed (pip install 'matplotlib>=3.11,<4'); PNG plots need it"


class _Skip(Exception):
    """A plot that cannot be drawn for this study; the message is the reason."""


def write_report(study: optuna.Study, out_dir: str, *, metric_name: str = "val_macro_f1") -> list[str]:
    """Write trials.csv, Optuna's plots (a PNG each, all of them interactive in plots.html) and
    report.txt into ``out_dir``.

    Returns the paths written, in a fixed order (trials.csv, the PNGs in plot order, plots.html,
    report.txt). Plots that cannot be drawn are skipped, with the reason in report.txt (an HTML
    figure as ``<plot> (plots.html)``). Files of these names left in ``out_dir`` by an earlier
    report are removed first, so the directory never mixes two reports.
    """
    os.makedirs(out_dir, exist_ok=True)
    _remove_previous_outputs(out_dir)

    trials = study.get_trials(deepcopy=False)
    written: list[str] = []
    skipped: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []

    csv_path = os.path.join(out_dir, TRIALS_CSV)
    try:
        _write_trials_csv(study, csv_path)
        written.append(csv_path)
    except Exception as exc:  # a broken CSV must not cost the plots
        skipped.append((TRIALS_CSV, f"failed: {type(exc).__name__}: {exc}"))
        _remove_if_exists(csv_path)

    completed = _completed_finite(study)
    figures: list[tuple[str, Any]] = []  # (plot, plotly figure) for plots.html
    for plot in PLOTS:
        reason = _cannot_draw(plot, study, completed)
        for fmt in FORMATS:
            name = f"{plot}.png" if fmt == "png" else f"{plot} ({PLOTS_HTML})"
            if reason is not None:
                skipped.append((name, reason))
                continue
            png = os.path.join(out_dir, name) if fmt == "png" else None
            try:
                with _optuna_warnings_collected(plot, notes):
                    if png:
                        _draw_png(plot, study, completed, png, metric_name)
                    else:
                        figures.append((plot, _html_figure(plot, study, completed, metric_name)))
            except _Skip as exc:
                skipped.append((name, str(exc)))
            except Exception as exc:  # one plot failing must not cost the others
                skipped.append((name, f"failed: {type(exc).__name__}: {exc}"))
                if png:
                    _remove_if_exists(png)
            else:
                if png:
                    written.append(png)
    if figures:
        page = os.path.join(out_dir, PLOTS_HTML)
        try:
            _write_plots_page(page, figures, f"Optuna study {study.study_name!r}: {metric_name}")
        except Exception as exc:
            skipped += [(f"{plot} ({PLOTS_HTML})", f"failed: {type(exc).__name__}: {exc}") for plot, _ in figures]
            _remove_if_exists(page)
        else:
            written.append(page)

    report_path = os.path.join(out_dir, REPORT_TXT)
    _write_report_txt(report_path, study, trials, completed, metric_name, written, skipped, notes)
    written.append(report_path)
    return written


def best_so_far(study: optuna.Study) -> list[tuple[int, float]]:
    """``(trial number, best value so far)`` for every COMPLETE trial, in trial-number order.

    Only COMPLETE trials count (a pruned trial's last intermediate value is not a result).
    Direction-aware: the best is the maximum for a maximizing study, the minimum otherwise.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        raise ValueError(
            f"best_so_far needs a single-objective study; {study.study_name!r} has {len(study.directions)} objectives"
        )
    maximize = study.direction == StudyDirection.MAXIMIZE
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    series: list[tuple[int, float]] = []
    best: float | None = None
    for trial in trials:
        value = float(trial.value)
        if best is None or (value > best if maximize else value < best):
            best = value
        series.append((trial.number, best))
    return series


# --------------------------------------------------------------------------- trials.csv


def _write_trials_csv(study: optuna.Study, path: str) -> None:
    from optuna.distributions import IntDistribution

    frame = study.trials_dataframe()
    columns = list(frame.columns)
    if not columns:  # a study without trials: header only
        frame = frame.reindex(columns=list(_LEADING_COLUMNS))
        frame.to_csv(path, index=False)
        return
    values = ["value"] if "value" in columns else sorted(c for c in columns if c.startswith("values_"))
    leading = [c for c in ("number", "state", *values, "datetime_start", "datetime_complete", "duration") if c in columns]
    grouped = [sorted(c for c in columns if c.startswith(prefix)) for prefix in _GROUP_PREFIXES]
    taken = set(leading).union(*grouped)
    rest = sorted(c for c in columns if c not in taken)
    frame = frame[leading + [c for group in grouped for c in group] + rest]
    # An int parameter absent from some trials (conditional) would be written as 32.0 by pandas.
    int_params = {
        f"params_{name}"
        for t in study.get_trials(deepcopy=False)
        for name, dist in t.distributions.items()
        if isinstance(dist, IntDistribution)
    }
    for column in sorted(int_params & set(frame.columns)):
        try:
            frame[column] = frame[column].astype("Int64")
        except (TypeError, ValueError):  # the same name was not always an int parameter
            pass
    if "state" in frame.columns:  # TrialState names, not enum reprs, whatever the Optuna version
        frame["state"] = frame["state"].map(lambda s: getattr(s, "name", s))
    frame.sort_values("number", kind="stable").to_csv(path, index=False)


# --------------------------------------------------------------------------- plots


def _completed_finite(study: optuna.Study) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.values is not None and all(math.isfinite(v) for v in t.values)]


def _cannot_draw(plot: str, study: optuna.Study, completed: list[FrozenTrial]) -> str | None:
    """Why ``plot`` cannot be drawn for this study, or None when it can."""
    if len(study.directions) != 1:
        return f"multi-objective study ({len(study.directions)} objectives); the report draws single-objective plots only"
    if not completed:
        return "no completed trial with a finite value yet"
    if plot == "optimization_history":
        return None
    params = sorted({name for t in completed for name in t.params})
    if not params:
        return "the completed trials have no parameters"
    if plot == "param_importances":
        if len(completed) < 2:
            return f"needs at least 2 completed trials with a finite value (found {len(completed)})"
        if not _varying_params(completed):
            return "no parameter varies across the completed trials"
    return None


def _varying_params(completed: list[FrozenTrial]) -> list[str]:
    """Parameters with at least two different values (absent counts as a value) among ``completed``."""
    names = sorted({name for t in completed for name in t.params})
    varying = []
    for name in names:
        seen = {repr(t.params[name]) if name in t.params else "<absent>" for t in completed}
        if len(seen) >= 2:
            varying.append(name)
    return varying


def _importance_evaluator() -> Any:
    # Optuna 5's default evaluator is PED-ANOVA (get_param_importances' own default). It has no
    # randomness (Parzen estimators on a fixed grid, no random forest), so it is deterministic
    # without a seed, takes milliseconds, and, unlike fANOVA / mean decrease impurity, it scores
    # conditional parameters (cnn_width only exists for the cnn architecture) instead of
    # dropping them.
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator()


def _plot_kwargs(plot: str, completed: list[FrozenTrial], metric_name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"target_name": metric_name}
    if plot == "param_importances":
        kwargs["evaluator"] = _importance_evaluator()
        # An explicit, sorted list: Optuna collects the names in a set, so equal importances
        # would otherwise come out in a different order from one process to the next.
        kwargs["params"] = sorted({name for t in completed for name in t.params})
    return kwargs


def _html_figure(plot: str, study: optuna.Study, completed: list[FrozenTrial], metric_name: str) -> Any:
    if importlib.util.find_spec("plotly") is None:
        raise _Skip(_PLOTLY_HINT)
    _prefer_agg()  # optuna.visualization imports its matplotlib half, hence pyplot, too
    import optuna.visualization as vis

    return getattr(vis, f"plot_{plot}")(study, **_plot_kwargs(plot, completed, metric_name))


def _write_plots_page(path: str, figures: list[tuple[str, Any]], title: str) -> None:
    """One HTML page with every figure, plotly.js inlined once (with the first figure)."""
    from html import escape

    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{escape(title)}</title></head><body>',
        f"<h1>{escape(title)}</h1>",
        "<p>" + " · ".join(f'<a href="#{plot}">{plot.replace("_", " ")}</a>' for plot, _ in figures) + "</p>",
    ]
    for index, (plot, figure) in enumerate(figures):
        parts.append(f'<h2 id="{plot}">{plot.replace("_", " ")}</h2>')
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0, div_id=f"plot-{plot}"))
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts) + "\n")


def _draw_png(plot: str, study: optuna.Study, completed: list[FrozenTrial], path: str, metric_name: str) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise _Skip(_MATPLOTLIB_HINT)
    with _private_pyplot():
        import optuna.visualization.matplotlib as mvis

        axes = getattr(mvis, f"plot_{plot}")(study, **_plot_kwargs(plot, completed, metric_name))
        first = axes.flat[0] if hasattr(axes, "flat") else axes  # plot_slice: an array of Axes
        first.figure.savefig(path, dpi=100, bbox_inches="tight")


@contextmanager
def _private_pyplot() -> Iterator[Any]:
    """pyplot for one plot, leaving no global state behind.

    Optuna's matplotlib plots go through pyplot: they call ``plt.style.use("ggplot")`` (a global
    rcParams change) and leave their figures registered with pyplot. Here the style is undone by
    ``rc_context``, every figure opened inside is closed, and interactive mode is off so no
    window opens. The Agg backend is selected when pyplot is not imported yet (a headless sweep
    worker); a process that already chose a backend keeps it, only figures are saved.
    """
    import matplotlib

    _prefer_agg()
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        with matplotlib.rc_context(), plt.ioff():
            yield plt
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def _prefer_agg() -> None:
    """Select the Agg backend unless pyplot is imported already (then its backend stays)."""
    if "matplotlib.pyplot" not in sys.modules and importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")


@contextmanager
def _optuna_warnings_collected(plot: str, notes: list[tuple[str, str]]) -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (matplotlib backend) and keep other warnings as notes.

    Local to the block (``warnings.catch_warnings``); what PED-ANOVA or matplotlib warn about
    (few trials in a regime, a single-valued axis) ends up in report.txt instead of the log.
    """
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield
    for warning in caught:
        note = (plot, f"{warning.category.__name__}: {str(warning.message).strip()}")
        if note not in notes:
            notes.append(note)


# --------------------------------------------------------------------------- report.txt


def _write_report_txt(
    path: str,
    study: optuna.Study,
    trials: list[FrozenTrial],
    completed: list[FrozenTrial],
    metric_name: str,
    written: list[str],
    skipped: list[tuple[str, str]],
    notes: list[tuple[str, str]],
) -> None:
    states = Counter(t.state.name for t in trials)
    directions = ", ".join(d.name.lower() for d in study.directions)
    lines = [
        f"flower-exp sweep report: study {study.study_name!r} ({directions} {metric_name})",
        f"trials: {len(trials)}" + (" (" + ", ".join(f"{s} {n}" for s, n in sorted(states.items())) + ")" if trials else ""),
    ]
    if len(study.directions) == 1 and completed:
        best = _best(completed, study)
        lines.append(f"best: trial {best.number}, {metric_name} = {best.value:.6g}")
    lines += ["", "written:"]
    lines += [f"  {os.path.basename(p)}" for p in written] + [f"  {REPORT_TXT}"]
    lines += ["", "skipped:"]
    lines += [f"  {name}: {reason}" for name, reason in skipped] or ["  none"]
    if notes:
        lines += ["", "notes (warnings raised while drawing):"]
        lines += [f"  {plot}: {message}" for plot, message in notes]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _best(completed: list[FrozenTrial], study: optuna.Study) -> FrozenTrial:
    from optuna.study import StudyDirection

    key: Callable[[FrozenTrial], float] = lambda t: float(t.value)  # noqa: E731
    pick = max if study.direction == StudyDirection.MAXIMIZE else min
    return pick(sorted(completed, key=lambda t: t.number), key=key)


def _remove_previous_outputs(out_dir: str) -> None:
    # Page-per-plot HTML files of earlier flower-exp versions go too.
    names = [TRIALS_CSV, REPORT_TXT, PLOTS_HTML] + [f"{plot}.{fmt}" for plot in PLOTS for fmt in FORMATS]
    for name in names:
        _remove_if_exists(os.path.join(out_dir, name))


def _remove_if_exists(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
