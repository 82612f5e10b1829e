"""Benchmark 5: CLI start-up — ``flower-exp --help`` and ``flower-exp status`` vs ``python -c pass``.

Each command runs as a fresh process (the console script of the venv), the three commands
alternating, and wall times are medians. ``status`` runs in a temp project whose Optuna journal
holds a study with finished trials. A second run of each command under ``python -X importtime``
lists what it imported: neither may import TensorFlow or Keras.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO_ROOT, finish, log, md_table, median, parse_args  # noqa: E402

HEAVY = ("tensorflow", "keras")


def cli_script() -> str:
    """The ``flower-exp`` console script next to this interpreter."""
    script = Path(sys.executable).parent / "flower-exp"
    if not script.exists():
        raise SystemExit(f"{script} not found: install the project into this venv first")
    return str(script)


def make_project(folder: Path, trials: int) -> None:
    """A project whose default study (demo experiment, demo sweep) has ``trials`` finished trials."""
    import optuna

    from flower_exp.config import HeartbeatConfig
    from flower_exp.study import default_storage_url, open_storage

    shutil.copy(REPO_ROOT / "experiments.yaml", folder / "experiments.yaml")
    url = default_storage_url(folder / "experiments.yaml")
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="demo-demo", storage=open_storage(url, HeartbeatConfig()), direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr_max", 1e-4, 1e-2, log=True) * 10, n_trials=trials)


def wall_time(argv: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def heavy_imports(argv: list[str], cwd: Path, env: dict) -> tuple[list[str], list[tuple[float, str]]]:
    """(TensorFlow/Keras modules imported, the 5 slowest top-level imports as (ms, name))."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} under -X importtime exited {proc.returncode}: {proc.stderr[-500:]}")
    heavy, top = [], []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        name = parts[2]
        module = name.strip()
        if module.split(".")[0] in HEAVY:
            heavy.append(module)
        # Top-level imports are the ones not indented under another.
        if parts[1].strip().isdigit() and name.startswith(" ") and not name.startswith("  "):
            top.append((int(parts[1]) / 1000, module))
    return heavy, sorted(top, reverse=True)[:5]


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = 2 if args.smoke else 10
    script = cli_script()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GCS_DS_PATH")}
    env["COLUMNS"] = "120"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "flower-exp --help": [script, "--help"],
        "flower-exp status": [script, "status"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="flower-exp-startup-") as tmp:
        folder = Path(tmp)
        make_project(folder, trials=3 if args.smoke else 20)
        for name, cmd in commands.items():  # warm the page cache
            wall_time(cmd, folder, env)
        names = list(commands)
        for r in range(repeats):
            for name in names[r % 3 :] + names[: r % 3]:
                times[name].append(wall_time(commands[name], folder, env))
        log("timed " + ", ".join(f"{n} {median(t):.3f} s" for n, t in times.items()))
        imports = {name: heavy_imports(cmd, folder, env) for name, cmd in commands.items() if name != "python -c pass"}

    base = median(times["python -c pass"])
    rows = []
    for name, ts in times.items():
        heavy = imports.get(name, ([], []))[0]
        rows.append(
            [
                f"`{name}`",
                f"{median(ts):.3f} s",
                f"{min(ts):.3f}–{max(ts):.3f} s",
                f"{median(ts) / base:.1f}x",
                "—" if name not in imports else ("**yes**" if heavy else "no"),
            ]
        )
    table = md_table(["command", "wall time (median)", "range", "vs python -c pass", "imports TensorFlow/Keras"], rows)
    for name, (_heavy, top) in imports.items():
        table += f"\n\nSlowest top-level imports of `{name}` (`-X importtime`, cumulative): " + ", ".join(
            f"{module} {ms:.0f} ms" for ms, module in top
        )
    tf_free = not any(heavy for heavy, _ in imports.values())
    measured = (
        f"--help {median(times['flower-exp --help']):.2f} s, status {median(times['flower-exp status']):.2f} s "
        f"vs python -c pass {base:.3f} s (median of {repeats}); TensorFlow imported: "
        f"{'no' if tf_free else 'YES'}"
    )
    notes = (
        "Method: each command is a fresh process started with `subprocess.run` from this benchmark "
        f"(`.venv/bin/flower-exp`), the three commands in rotating order, {repeats} times each after one "
        "warm-up run; `status` reads a temp project's Optuna journal holding the default study "
        f"(demo-demo) with {3 if args.smoke else 20} finished trials. The import check reruns each command "
        "under `python -X importtime` and looks for any `tensorflow*` or `keras*` module. Wall times "
        "are what a user waits for; the gap to `python -c pass` is Typer/Rich for `--help`, plus "
        "Optuna (and its SQLAlchemy) for `status`."
    )
    if not tf_free:
        notes += "\n\nGoal missed: " + "; ".join(f"`{n}` imports {', '.join(h[:5])}" for n, (h, _) in imports.items() if h)
    finish(
        args,
        name="startup",
        title="CLI start-up",
        goal="`flower-exp --help` and `flower-exp status` import no TensorFlow (wall time reported vs `python -c pass`)",
        goal_met=tf_free,
        measured=measured,
        table_md=table,
        notes_md=notes,
    )


if __name__ == "__main__":
    main()
