"""Soak test: a 2-worker sweep under random SIGKILLs, then a trial-by-trial check that the
Optuna study and MLflow agree. Not part of the default test suite (tests/test_faults.py runs a
30-second smoke of it).

    .venv/bin/python scripts/soak.py --minutes 10 --kill-every 20 --workers 2 --seed 1 --json soak.json
    .venv/bin/python scripts/soak.py --repeat-kill 20 --json repeat.json

Soak: ``--workers`` ``flower-exp sweep`` processes share one journal study (what ``sweep
--workers`` or several machines do) in a temporary project with tiny demo data. Every
``--kill-every`` seconds (jittered +-50%) one worker, or all of them at once (the whole sweep,
as a preempted VM), is SIGKILLed and restarted. After ``--minutes`` the workers are killed a last
time and one clean ``flower-exp sweep`` finishes the study (it retries the dead trials), then
every trial is checked against its MLflow run.

``--repeat-kill N``: N times, a single-worker sweep of 3 trials is SIGKILLed at a random epoch of
a random trial and the same command is rerun; a repetition counts as resumed when the rerun
exits 0 and the checks find nothing wrong.

Exit status 0 when no mismatch was found, 1 otherwise. The summary is printed and, with
``--json``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from projects import write_project  # noqa: E402  (the tests' tiny project)

STUDY = "soak-soak"  # <experiment>-<sweep file stem>
# Generous for a shared, loaded machine: a live trial whose heartbeat is late must not look dead.
GRACE_S = 6
FINAL_EXTRA_TRIALS = 2  # new trials the clean final sweep runs after the retries


def sweep_file(epochs: int, trials: int, seed: int) -> dict[str, Any]:
    """A random-sampler sweep; every killed trial is retried (max_retry far above the kills)."""
    return {
        "trials": trials,
        "sampler": {"name": "random", "seed": seed},
        "pruner": {"name": "none"},
        "heartbeat": {"interval_s": 1, "grace_s": GRACE_S, "max_retry": 1000},
        "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "cnn_width": {"choices": [4, 8]}},
        "fixed": {"epochs": epochs},
    }


def make_project(root: Path, data_dir: str, epochs: int, trials: int, seed: int) -> Path:
    """A project folder: experiments.yaml (experiment ``soak``) and sweeps/soak.yaml."""
    return write_project(root, data_dir, "soak", sweep_file(epochs, trials, seed), epochs=epochs)


def make_data(folder: Path) -> str:
    from flower_exp.data.demo import generate_demo

    generate_demo(str(folder), classes=3, per_class=16, sizes=(32,), seed=1, shards=2)
    return str(folder)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GCS_DS_PATH", "MLFLOW_TRACKING_URI")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    return env


class Worker:
    """One ``flower-exp sweep`` process in its own process group, output appended to a log."""

    def __init__(self, project: Path, name: str, args: list[str]):
        self.project, self.name, self.args = project, name, args
        self.log = project / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as out:
            out.write(f"\n===== start {self.starts} at {time.strftime('%H:%M:%S')}\n")
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flower_exp.cli", *self.args],
                cwd=self.project,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL the process group; True if it was running."""
        if not self.alive():
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.proc.wait(timeout=60)
        return True


# --------------------------------------------------------------------------- checks


def load(project: Path):
    """The study (journal) and the MLflow client of a project."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    journal = project / "mlruns" / "optuna" / "journal.log"
    study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(journal))))
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return study, client


def check(project: Path, expected_finished: int | None = None) -> dict[str, Any]:
    """Compare the study with MLflow trial by trial; returns counts and a list of mismatches."""
    from flower_exp.study.names import ATTR_FAIL, ATTR_PARENT, ATTR_RETRY_OF, ATTR_RUN

    study, client = load(project)
    experiment = client.get_experiment_by_name("soak")
    runs = client.search_runs([experiment.experiment_id], max_results=50000) if experiment else []
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    mismatches: list[str] = []

    def bad(message: str) -> None:
        mismatches.append(message)

    numbers = [t.number for t in trials]
    if len(set(numbers)) != len(numbers):
        bad(f"duplicate trial numbers: {sorted(numbers)}")
    for t in trials:
        if t.state.name in ("RUNNING", "WAITING"):
            bad(f"trial {t.number} left {t.state.name}")
    children = [r for r in runs if r.data.tags.get("flower_exp.kind") == "trial"]
    parents = [r for r in runs if r.data.tags.get("flower_exp.kind") == "sweep"]
    for r in runs:
        if r.info.status == "RUNNING":
            bad(f"MLflow run {r.info.run_id} ({r.data.tags.get('flower_exp.kind')}) left RUNNING")
    if len(parents) != 1 or parents[0].info.run_id != study.user_attrs.get(ATTR_PARENT):
        bad(f"expected one parent run {study.user_attrs.get(ATTR_PARENT)}, found {[r.info.run_id for r in parents]}")
    by_number: dict[int, list] = {}
    for r in children:
        by_number.setdefault(int(r.data.tags["flower_exp.trial_number"]), []).append(r)
        if parents and r.data.tags.get("mlflow.parentRunId") != parents[0].info.run_id:
            bad(f"run {r.info.run_id} is not a child of the parent run")
    for number, rs in by_number.items():
        if len(rs) > 1:
            bad(f"trial {number} has {len(rs)} MLflow runs")
        if number not in set(numbers):
            bad(f"MLflow run {rs[0].info.run_id} names trial {number}, which the study does not have")

    killed = no_run = retried = 0
    # Optuna's retry_history lists every dead attempt of a configuration ("failed_trial" only
    # names the first one).
    retried_numbers = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        rs = by_number.get(t.number, [])
        run = rs[0] if rs else None
        if run is not None and t.user_attrs.get(ATTR_RUN) not in (None, run.info.run_id):
            bad(f"trial {t.number}: user attr run {t.user_attrs.get(ATTR_RUN)} != MLflow run {run.info.run_id}")
        if t.state.name == "COMPLETE":
            if run is None or run.info.status != "FINISHED":
                bad(f"complete trial {t.number}: run {run and run.info.status}")
                continue
            if abs(run.data.metrics.get("best_val_macro_f1", float("nan")) - t.value) > 1e-9:
                bad(f"trial {t.number}: value {t.value} != run metric {run.data.metrics.get('best_val_macro_f1')}")
            for key, value in t.params.items():
                logged = run.data.params.get(key)
                if logged is None or type(value)(logged) != value:
                    bad(f"trial {t.number}: param {key}={value!r}, run has {logged!r}")
            if run.data.tags.get("flower_exp.state") != "finished":
                bad(f"trial {t.number}: run state tag {run.data.tags.get('flower_exp.state')}")
        elif t.state.name == "FAIL":
            if run is not None and run.info.status != "FAILED":
                bad(f"failed trial {t.number}: run {run.info.run_id} is {run.info.status}")
            if ATTR_FAIL not in t.user_attrs:  # a dead worker's trial, not its own error
                killed += 1
                no_run += run is None
                if t.number in retried_numbers:
                    retried += 1
                else:
                    bad(f"killed trial {t.number} was not retried")
        if t.user_attrs.get(ATTR_RETRY_OF) is not None and t.system_attrs.get("failed_trial") is None:
            bad(f"trial {t.number} claims to retry {t.user_attrs[ATTR_RETRY_OF]} without Optuna's retry record")
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    if expected_finished is not None and finished != expected_finished:
        bad(f"{finished} finished trials, expected {expected_finished}")
    if parents and parents[0].info.status != "FINISHED":
        bad(f"parent run is {parents[0].info.status}")
    return {
        "trials": len(trials),
        "trials_by_state": states,
        "finished": finished,
        "killed_trials": killed,
        "killed_before_their_run_existed": no_run,
        "killed_trials_retried": retried,
        "child_runs": len(children),
        "mismatches": mismatches,
    }


def _finished(project: Path) -> tuple[int, int]:
    """(finished, running) trials of the study now."""
    study, _ = load(project)
    trials = study.get_trials(deepcopy=False)
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials), sum(t.state.name == "RUNNING" for t in trials)


def _wait_for_store(project: Path, worker: Worker, timeout: float = 300) -> None:
    """Until the first worker has created the study and the MLflow store (no concurrent migrations)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not worker.alive():
            raise SystemExit(f"first worker exited early:\n{worker.log.read_text()[-3000:]}")
        if "MLflow parent run" in worker.log.read_text() or "trial 0:" in worker.log.read_text():
            return
        time.sleep(0.5)
    raise SystemExit("the first worker did not start the study in time")


def _final_sweep(project: Path, timeout: float = 900) -> tuple[subprocess.CompletedProcess, int]:
    """One clean sweep to a total that needs the dead trials' retries plus a few new trials."""
    finished, running = _finished(project)
    total = finished + running + FINAL_EXTRA_TRIALS
    return subprocess.run(
        [sys.executable, "-m", "flower_exp.cli", "sweep", "-s", "soak", "--trials", str(total), "--quiet"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    ), total


# --------------------------------------------------------------------------- modes


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Random kills for ``args.minutes``, then a clean finish and the checks."""
    rng = random.Random(args.seed)
    data = make_data(root / "data")
    project = make_project(root / "project", data, epochs=args.epochs, trials=100000, seed=args.seed)
    sweep_args = ["sweep", "-s", "soak", "--trials", "100000", "--quiet"]
    workers = [Worker(project, f"worker{i + 1}", sweep_args) for i in range(args.workers)]
    workers[0].start()
    _wait_for_store(project, workers[0])
    for w in workers[1:]:
        w.start()
    kills = {"one_worker": 0, "whole_sweep": 0}
    end = time.time() + 60 * args.minutes
    while time.time() < end:
        time.sleep(max(0.5, min(args.kill_every * rng.uniform(0.5, 1.5), end - time.time())))
        if time.time() >= end:
            break
        if rng.random() < 0.3:
            if sum(w.kill() for w in workers):
                kills["whole_sweep"] += 1
        else:
            kills["one_worker"] += rng.choice(workers).kill()
        for w in workers:
            if not w.alive():
                if w.proc is not None and w.proc.returncode not in (0, -signal.SIGKILL):
                    print(f"{w.name} exited {w.proc.returncode}; see {w.log}", file=sys.stderr)
                w.start()
        if args.verbose:
            print(f"{time.strftime('%H:%M:%S')} kills {kills}; finished/running {_finished(project)}", flush=True)
    # Preempt everything one last time: the clean finish must pick up whatever was running.
    kills["whole_sweep"] += bool(sum(w.kill() for w in workers))
    final, total = _final_sweep(project)
    summary = check(project, expected_finished=total if final.returncode == 0 else None)
    if final.returncode != 0:
        summary["mismatches"].append(f"final sweep exited {final.returncode}: {final.stderr[-1500:]}")
    summary = {
        "mode": "soak",
        "minutes": args.minutes,
        "kill_every_s": args.kill_every,
        "workers": args.workers,
        "seed": args.seed,
        "epochs_per_trial": args.epochs,
        "kills": sum(kills.values()),
        "kills_by_kind": kills,
        "worker_starts": sum(w.starts for w in workers),
        "final_sweep_trials": total,
        "final_sweep_exit": final.returncode,
        **summary,
        "project": str(project),
    }
    summary["mismatch_count"] = len(summary["mismatches"])
    return summary


def repeat_kill(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``args.repeat_kill`` times: SIGKILL a single-worker sweep at a random epoch, rerun it."""
    rng = random.Random(args.seed)
    data = make_data(root / "data")
    trials = 3
    resumed, lost, details = 0, 0, []
    for rep in range(args.repeat_kill):
        project = make_project(root / f"rep{rep}", data, epochs=args.epochs, trials=trials, seed=args.seed + rep)
        cmd = ["sweep", "-s", "soak", "--trials", str(trials)]
        victim_trial, victim_epoch = rng.randrange(trials), rng.randint(1, args.epochs)
        line = re.compile(rf"^trial {victim_trial}: epoch {victim_epoch}/{args.epochs}\b", re.M)
        worker = Worker(project, "sweep", cmd)
        worker.start()
        deadline = time.time() + 600
        while worker.alive() and time.time() < deadline and not line.search(worker.log.read_text()):
            time.sleep(0.05)
        was_alive = worker.kill()
        rerun = subprocess.run(
            [sys.executable, "-m", "flower_exp.cli", *cmd], cwd=project, env=_env(), capture_output=True, text=True, timeout=900
        )
        result = check(project, expected_finished=trials)
        if rerun.returncode != 0:
            result["mismatches"].append(f"rerun exited {rerun.returncode}: {rerun.stderr[-800:]}")
        ok = was_alive and not result["mismatches"] and result["killed_trials"] == 1
        resumed += ok
        lost += max(0, trials - result["finished"])
        details.append(
            {
                "repetition": rep,
                "killed_trial": victim_trial,
                "killed_at_epoch": victim_epoch,
                "killed_mid_run": was_alive,
                "resumed": ok,
                **{k: result[k] for k in ("trials_by_state", "finished", "killed_trials", "killed_trials_retried", "mismatches")},
            }
        )
        if args.verbose:
            print(json.dumps(details[-1]), flush=True)
    return {
        "mode": "repeat-kill",
        "repetitions": args.repeat_kill,
        "resumed": resumed,
        "trials_lost": lost,
        "epochs_per_trial": args.epochs,
        "seed": args.seed,
        "summary": f"{args.repeat_kill} repetitions: {resumed}/{args.repeat_kill} resumed, {lost} trials lost",
        "mismatch_count": sum(len(d["mismatches"]) for d in details) + (args.repeat_kill - resumed),
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep killing (soak mode)")
    parser.add_argument("--kill-every", type=float, default=20.0, help="mean seconds between kills (jittered +-50%%)")
    parser.add_argument("--workers", type=int, default=2, help="sweep worker processes sharing the study")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill schedule and the sampler")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    parser.add_argument("--repeat-kill", type=int, metavar="N", help="fault-1 mode: N kill-and-rerun repetitions")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--verbose", "-v", action="store_true", help="a line per kill / repetition")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.epochs < 1 or args.kill_every <= 0 or (args.repeat_kill is not None and args.repeat_kill < 1):
        parser.error("--workers, --epochs, --kill-every and --repeat-kill must be positive")
    root = args.keep or Path(tempfile.mkdtemp(prefix="flower-exp-soak-"))
    try:
        summary = repeat_kill(args, root) if args.repeat_kill else soak(args, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if summary["mismatch_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
