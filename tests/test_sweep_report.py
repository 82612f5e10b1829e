"""Sweep report: Optuna plots (PNG + self-contained HTML), trials.csv, report.txt, best_so_far.

Real Optuna studies with a cheap objective shaped like a flower sweep: a categorical
architecture, a conditional ``cnn_width`` (cnn only), a log-scale ``lr_max``, an int
``lr_rampup_epochs``, per-epoch ``trial.report``, some pruned trials and a failed one.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("plotly")

from flower_exp.sweep_report import best_so_far, write_report  # noqa: E402

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
PLOT_FILES = [f"{plot}.png" for plot in PLOTS] + ["plots.html"]
# What report.txt calls each drawing: a PNG file, or a figure on plots.html.
DRAWINGS = [name for plot in PLOTS for name in (f"{plot}.png", f"{plot} (plots.html)")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRUNED = {3, 7}
FAILED = {5}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(level)


def objective(trial: optuna.Trial) -> float:
    architecture = trial.suggest_categorical("architecture", ["cnn", "densenet121"])
    width = trial.suggest_int("cnn_width", 16, 64, step=16) if architecture == "cnn" else 0
    lr_max = trial.suggest_float("lr_max", 1e-4, 2e-3, log=True)
    rampup = trial.suggest_int("lr_rampup_epochs", 0, 5)
    trial.set_user_attr("epoch_time_s", 0.5 + trial.number / 10)
    if trial.number in FAILED:
        raise RuntimeError("simulated crash")
    score = 0.0
    for epoch in range(3):
        base = 0.55 if architecture == "densenet121" else 0.35 + width / 400
        score = base + 0.05 * epoch + 20 * lr_max - 0.01 * rampup
        trial.report(score, epoch)
        if trial.number in PRUNED and epoch == 1:
            raise optuna.TrialPruned()
    return score


def make_study(n_trials: int, *, direction: str = "maximize", storage=None, name: str = "report") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=optuna.samplers.RandomSampler(seed=3),
    )
    # Both architectures early, so conditional params show up whatever the sampler draws.
    study.enqueue_trial({"architecture": "cnn", "cnn_width": 32})
    study.enqueue_trial({"architecture": "densenet121"})
    study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,))
    return study


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """A 12-trial study on a journal file storage (as the sweep uses), reported once."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    root = tmp_path_factory.mktemp("report")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = JournalStorage(JournalFileBackend(str(root / "journal.log")))
    study = make_study(12, storage=storage)
    optuna.logging.set_verbosity(level)
    out = root / "out" / "nested"  # created by write_report
    paths = write_report(study, str(out))
    return study, out, paths


def report_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif current and line.startswith("  "):
            sections[current].append(line.strip())
    return sections


def test_full_study_writes_every_file(full_report):
    study, out, paths = full_report
    states = {t.number: t.state.name for t in study.trials}
    assert {n for n, s in states.items() if s == "PRUNED"} == PRUNED
    assert {n for n, s in states.items() if s == "FAIL"} == FAILED

    names = [Path(p).name for p in paths]
    assert names == ["trials.csv", *PLOT_FILES, "report.txt"]
    for p in paths:
        assert Path(p).parent == out and Path(p).stat().st_size > 0
    sections = report_sections((out / "report.txt").read_text())
    assert sections["skipped"] == ["none"]
    assert sections["written"] == names


def figure_section(html: str, plot: str) -> str:
    """The part of plots.html from ``plot``'s heading to the next heading."""
    start = html.index(f'<h2 id="{plot}">')
    end = html.find("<h2 ", start + 1)
    return html[start : end if end != -1 else len(html)]


def test_pngs_are_png_and_html_is_self_contained(full_report):
    _, out, _ = full_report
    for name in PLOT_FILES[:-1]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name  # a drawn plot, not an empty canvas
    html = (out / "plots.html").read_text(encoding="utf-8")
    for plot in PLOTS:
        assert "Plotly.newPlot" in figure_section(html, plot), plot
    external = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", html, flags=re.I)
    assert external == []
    # plotly.js (~4.5 MB) is inlined, and only once: a page per plot repeated it four times.
    assert html.count("plotly.js v") == 1 and 1_000_000 < len(html) < 8_000_000, len(html)


def test_objective_axis_is_labelled_with_metric_name(full_report):
    _, out, _ = full_report
    html = (out / "plots.html").read_text()
    for plot in ("optimization_history", "parallel_coordinate", "slice"):
        assert "val_macro_f1" in figure_section(html, plot), plot


def test_conditional_param_appears_in_plots(full_report):
    _, out, _ = full_report
    html = (out / "plots.html").read_text()
    for plot in ("param_importances", "parallel_coordinate", "slice"):
        assert "cnn_width" in figure_section(html, plot), plot


def test_trials_csv_one_row_per_trial_with_states(full_report):
    study, out, _ = full_report
    with open(out / "trials.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = list(reader)
    assert header[:6] == ["number", "state", "value", "datetime_start", "datetime_complete", "duration"]
    params = [c for c in header if c.startswith("params_")]
    assert params == ["params_architecture", "params_cnn_width", "params_lr_max", "params_lr_rampup_epochs"]
    assert header.index("params_lr_rampup_epochs") < header.index("user_attrs_epoch_time_s")
    assert [int(r["number"]) for r in rows] == list(range(12))
    assert [r["state"] for r in rows] == [t.state.name for t in study.trials]
    assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED", "FAIL"}
    for row in rows:  # conditional parameter: only for cnn
        assert (row["params_cnn_width"] != "") == (row["params_architecture"] == "cnn")
        assert row["params_cnn_width"] in ("", "16", "32", "48", "64")  # ints stay ints
    assert rows[5]["value"] == ""  # the failed trial


def test_one_completed_trial_writes_what_it_can(tmp_path):
    # Exactly one COMPLETE trial, then a pruned and a failed one.
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"architecture": "cnn", "cnn_width": 32, "lr_max": 1e-3, "lr_rampup_epochs": 2})
    study.optimize(objective, n_trials=1)
    pruned = study.ask()
    pruned.suggest_categorical("architecture", ["cnn", "densenet121"])
    pruned.report(0.1, 0)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL"]

    paths = write_report(study, str(tmp_path), metric_name="val_macro_f1")
    names = {Path(p).name for p in paths}
    assert {"trials.csv", "report.txt", "optimization_history.png", "plots.html"} <= names
    assert "param_importances.png" not in names
    assert not (tmp_path / "param_importances.png").exists()
    assert '<h2 id="param_importances">' not in (tmp_path / "plots.html").read_text()
    sections = report_sections((tmp_path / "report.txt").read_text())
    skipped = dict(line.split(": ", 1) for line in sections["skipped"])
    assert set(skipped) == {"param_importances.png", "param_importances (plots.html)"}
    assert "at least 2 completed trials" in skipped["param_importances.png"]
    assert set(sections["written"]) == names
    with open(tmp_path / "trials.csv", newline="") as fh:
        assert [r["state"] for r in csv.DictReader(fh)] == ["COMPLETE", "PRUNED", "FAIL"]


def test_no_varying_param_skips_importances(tmp_path):
    study = optuna.create_study(direction="maximize")
    for _ in range(3):
        study.enqueue_trial({"architecture": "densenet121", "lr_max": 1e-3, "lr_rampup_epochs": 1})
    study.optimize(objective, n_trials=3)
    names = {Path(p).name for p in write_report(study, str(tmp_path))}
    assert "slice.png" in names and "param_importances.png" not in names
    assert "no parameter varies" in (tmp_path / "report.txt").read_text()


@pytest.mark.parametrize("kind", ["empty", "all_pruned_or_failed"])
def test_zero_completed_trials_does_not_raise(tmp_path, kind):
    study = optuna.create_study(direction="maximize")
    if kind == "all_pruned_or_failed":
        for state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
            trial = study.ask()
            trial.suggest_float("lr_max", 1e-4, 2e-3, log=True)
            study.tell(trial, state=state)
    paths = write_report(study, str(tmp_path))
    assert [Path(p).name for p in paths] == ["trials.csv", "report.txt"]
    sections = report_sections((tmp_path / "report.txt").read_text())
    assert {line.split(": ", 1)[0] for line in sections["skipped"]} == set(DRAWINGS)
    assert all("no completed trial" in line for line in sections["skipped"])
    with open(tmp_path / "trials.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames[:2] == ["number", "state"]
    assert len(rows) == len(study.trials)
    assert best_so_far(study) == []


def test_missing_plotly_skips_html_only(tmp_path, monkeypatch, full_report):
    import importlib.util

    study, _, _ = full_report
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real_find_spec(name, *a))
    names = [Path(p).name for p in write_report(study, str(tmp_path))]
    assert names == ["trials.csv", *PLOT_FILES[:-1], "report.txt"]
    skipped = report_sections((tmp_path / "report.txt").read_text())["skipped"]
    assert len(skipped) == 4 and all("plotly is not installed" in line for line in skipped)


def test_rerun_replaces_stale_outputs(tmp_path, full_report):
    _, full_out, _ = full_report
    (tmp_path / "param_importances.png").write_bytes((full_out / "param_importances.png").read_bytes())
    (tmp_path / "plots.html").write_text((full_out / "plots.html").read_text())
    (tmp_path / "slice.html").write_text("a page-per-plot report of an earlier version")
    (tmp_path / "unrelated.txt").write_text("keep me")
    write_report(optuna.create_study(), str(tmp_path))
    assert not (tmp_path / "param_importances.png").exists()
    assert not (tmp_path / "plots.html").exists() and not (tmp_path / "slice.html").exists()
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"


def test_no_pyplot_or_warning_state_leaks(tmp_path, full_report):
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt

    study, _, _ = full_report
    facecolor = matplotlib.rcParams["axes.facecolor"]
    figures = plt.get_fignums()
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(study, str(tmp_path))
    assert plt.get_fignums() == figures
    assert matplotlib.rcParams["axes.facecolor"] == facecolor  # Optuna's plt.style.use("ggplot") undone
    assert list(warnings.filters) == filters
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


def test_param_importances_deterministic(tmp_path, full_report):
    study, out, _ = full_report
    write_report(study, str(tmp_path))

    def bars(path: Path) -> list:
        html = figure_section(path.read_text(), "param_importances")
        start = html.index("Plotly.newPlot(")
        payload = html[start:]
        # Figure data lives in the first JSON array after the div id.
        data_start = payload.index("[")
        data, _ = json.JSONDecoder().raw_decode(payload[data_start:])
        return [(d.get("y"), d.get("x")) for d in data]

    assert bars(out / "plots.html") == bars(tmp_path / "plots.html")


def manual_best(study: optuna.Study) -> list[tuple[int, float]]:
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return [(t.number, pick(u.value for u in done if u.number <= t.number)) for t in done]


# Values that step up and down: None = pruned (after reporting 0.99, which must not count),
# "fail" = failed trial.
SERIES = [0.50, 0.30, None, 0.70, "fail", 0.60, 0.20, None, 0.90, 0.40, 0.90, 0.10]


def study_with_values(direction: str) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value in SERIES:
        trial = study.ask()
        trial.suggest_float("lr_max", 1e-4, 2e-3, log=True)
        if value is None:
            trial.report(0.99 if direction == "maximize" else 0.01, 0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif value == "fail":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trial.report(value, 0)
            study.tell(trial, value)
    return study


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("maximize", [0.5, 0.5, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9, 0.9]),
        ("minimize", [0.5, 0.3, 0.3, 0.3, 0.2, 0.2, 0.2, 0.2, 0.1]),
    ],
)
def test_best_so_far(direction, expected):
    study = study_with_values(direction)
    series = best_so_far(study)
    assert series == manual_best(study)
    assert [v for _, v in series] == expected
    assert [n for n, _ in series] == [0, 1, 3, 5, 6, 8, 9, 10, 11]  # COMPLETE trials only
    values = [v for _, v in series]
    ordered = (
        all(a <= b for a, b in zip(values, values[1:]))
        if direction == "maximize"
        else all(a >= b for a, b in zip(values, values[1:]))
    )
    assert ordered
    assert values[-1] == study.best_value


def test_best_so_far_on_sampled_study():
    study = make_study(12, name="sampled")
    assert best_so_far(study) == manual_best(study)
    assert not {n for n, _ in best_so_far(study)} & (PRUNED | FAILED)


def test_import_is_lazy():
    code = (
        "import sys, flower_exp.sweep_report\n"
        "heavy = [m for m in ('optuna', 'matplotlib', 'plotly', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "", proc.stdout
