"""Benchmark 4: memory across trials in one sweep worker process.

Runs a real sweep in this process (``flower_exp.study.run_sweep`` with one worker: Optuna
journal storage, MLflow sqlite store, ``train.run`` per trial, exactly the path of
``flower-exp sweep``) and samples this process' resident set size at every ``trial_end``
event, i.e. after each trial has released its model and datasets.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import demo_data, finish, log, md_table, parse_args  # noqa: E402

GOAL_GROWTH = 0.10
# What the investigation of the leak found and how it was fixed (rendered on every full run).
LEAK_ROOT_CAUSE = (
    "Root cause of the earlier leak (+39%, ~18 MiB per trial, before the fix): every trial's "
    "traced graphs stayed alive — after `keras.backend.clear_session()` + `gc.collect()` about 56 "
    "`adam_*` `FuncGraph`s (the optimizer's per-variable update functions) and 2 `one_step_on_data` "
    "graphs per trial survived, ~25-35k gc-tracked TensorFlow objects. The models themselves were "
    "collected; a back-reference walk from a surviving graph to a module found the holder: "
    "`tensorflow.python.framework.ops._gradient_registry` → `CustomGradient-<uid>` entry → "
    "`internal_grad_fn` → `tape_grad_fn` closure → the train step's gradient tensors → the "
    "`one_step_on_data` `FuncGraph` → its ops → the `adam_*` cond graphs. Keras' TensorFlow "
    "optimizer all-reduces gradients in every train step even on one device "
    "(`ReplicaContext.all_reduce`, a `tf.custom_gradient`), and `tf.custom_gradient` traced in graph "
    "mode registers its gradient in that process-wide registry and never removes it (TensorFlow "
    "issues #27492, #97697). Fix: `flower_exp.train._freeing_run_memory` wraps each run "
    "(`train.run`, `train.refit`) and unregisters the `CustomGradient-*` names registered during it, "
    "then collects; live `FuncGraph`s now stay at the first trial's count (4: the shared decoded "
    "validation cache's), checked by tests/test_memory.py over 4 trials in one process."
)


def rss_mib() -> float:
    """This process' resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_project(folder: Path, root: str, trials: int, epochs: int) -> Path:
    import yaml

    exp = {
        "data_dir": root,
        "image_size": 32,
        "batch_size_per_replica": 16,
        "shuffle_buffer": 64,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 1,
    }
    sweep = {
        "trials": trials,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
        # Trials must train to the end so every one does the same kind of work.
        "pruner": {"name": "none"},
        "params": {
            "cnn_width": {"choices": [4, 8, 16]},
            "cnn_depth": {"low": 2, "high": 3},
            "dropout": {"low": 0.0, "high": 0.4},
            "lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True},
        },
        "fixed": {"architecture": "cnn", "weights": "none", "epochs": epochs},
    }
    (folder / "experiments.yaml").write_text(yaml.safe_dump({"default": "mem", "experiments": {"mem": exp}}))
    (folder / "sweeps").mkdir()
    (folder / "sweeps" / "mem.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return folder / "experiments.yaml"


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([s["trial"] for s in samples], [s["rss"] for s in samples], marker="o")
    ax.set_xlabel("trials finished in this process")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Sweep worker memory after each trial")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flower_exp.study import SweepOptions, run_sweep

    trials, epochs, per_class = (2, 1, 10) if args.smoke else (20, 2, 20)
    root = demo_data((32,), per_class)
    samples: list[dict] = []
    started = [time.perf_counter()]

    def on_event(event: dict) -> None:
        if event["kind"] == "trial_start":
            started[0] = time.perf_counter()
        elif event["kind"] == "trial_end":
            samples.append(
                {
                    "trial": len(samples) + 1,
                    "rss": rss_mib(),
                    "state": event["state"],
                    "seconds": time.perf_counter() - started[0],
                }
            )
            log(f"trial {event['number']} {event['state']}: RSS {samples[-1]['rss']:.0f} MiB")

    before = rss_mib()
    with tempfile.TemporaryDirectory(prefix="flower-exp-memory-") as tmp:
        config = make_project(Path(tmp), root, trials, epochs)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the project's own sqlite store
        run_sweep(SweepOptions(sweep="mem", config=config, quiet=True), log=lambda _m: None, on_event=on_event)
    if len(samples) != trials:
        raise SystemExit(f"expected {trials} trial_end events, got {len(samples)}")

    first, last = samples[0]["rss"], samples[-1]["rss"]
    growth = (last - first) / first
    second = samples[1]["rss"] if len(samples) > 1 else first
    per_trial = (last - second) / max(1, len(samples) - 2)
    shown = (
        samples if len(samples) <= 5 else [samples[i] for i in sorted({0, 1, 2, 4, 9, 14, len(samples) - 1}) if i < len(samples)]
    )
    table = md_table(
        ["after trial", "RSS (MiB)", "trial state", "trial wall time (s)"],
        [[s["trial"], f"{s['rss']:.0f}", s["state"], f"{s['seconds']:.1f}"] for s in shown],
    )
    table += f"\n\nRSS before the sweep (flower_exp.study imported, TensorFlow not yet): {before:.0f} MiB."
    measured = (
        f"RSS {first:.0f} MiB after trial 1, {last:.0f} MiB after trial {len(samples)}: "
        f"{100 * growth:+.1f}% ({per_trial:+.1f} MiB per trial after trial 2)"
    )
    notes = (
        f"Method: `run_sweep` in this process (one worker) over demo data at 32 px (6 classes, {per_class} per "
        f"class), {trials} trials of {epochs} epochs with TPE over CNN width/depth, dropout and peak LR, pruning "
        "off, MLflow sqlite store and Optuna journal file in a temp project. RSS (`VmRSS` of "
        "/proc/self/status) is read at each `trial_end` event, after the trial's model and datasets "
        "were released (`keras.backend.clear_session()`, the run's custom-gradient registrations dropped, "
        "`gc.collect()`, in `train.run`). Trial 1 "
        "includes one-off costs (TensorFlow kernels, the decoded validation cache, MLflow's "
        "SQLAlchemy engine), which is why growth is measured from it."
    )
    if not args.smoke:
        if growth >= GOAL_GROWTH:
            notes += (
                f"\n\nGoal missed: {100 * growth:.1f}% growth, about {per_trial:.1f} MiB per trial: "
                "something still survives each trial (see the table)."
            )
        notes += "\n\n" + LEAK_ROOT_CAUSE
    finish(
        args,
        name="memory",
        title="Memory across trials in one worker",
        goal=f"RSS growth from after trial 1 to after trial 20 < {GOAL_GROWTH:.0%}",
        goal_met=bool(growth < GOAL_GROWTH),
        measured=measured,
        table_md=table,
        notes_md=notes,
        draw=lambda path: plot(samples, path),
    )


if __name__ == "__main__":
    main()
