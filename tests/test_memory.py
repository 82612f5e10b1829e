"""A sweep worker runs many trials in one process: a finished trial must leave no graphs behind.

Regression test for the leak benchmarks/memory.py measured (~18 MiB RSS per trial): every
trial's train-step and optimizer ``FuncGraph``s stayed reachable from TensorFlow's global
gradient registry (see ``flower_exp.train._freeing_run_memory``).
"""

from __future__ import annotations

import gc
import logging

import yaml

from flower_exp.study import SweepOptions, run_sweep

TRIALS = 4
SWEEP = {
    "trials": TRIALS,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "params": {"cnn_width": {"choices": [4, 8]}, "lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}},
    "fixed": {"architecture": "cnn", "weights": "none", "epochs": 1, "cnn_depth": 2},
}


def live_func_graphs() -> list[str]:
    """Names of the traced TensorFlow graphs still alive after a full collection."""
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sorted(o.name for o in gc.get_objects() if isinstance(o, FuncGraph))


def test_trials_in_one_worker_leave_no_graphs_behind(tmp_path, demo_root, caplog):
    tiny = {
        "data_dir": demo_root,
        "image_size": 32,
        "batch_size_per_replica": 16,
        "shuffle_buffer": 64,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 1,
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"default": "tiny", "experiments": {"tiny": tiny}}))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "mem.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))

    after_trial: list[list[str]] = []

    def on_event(event: dict) -> None:
        if event["kind"] == "trial_end":
            assert event["state"] == "complete", event
            after_trial.append(live_func_graphs())

    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        result = run_sweep(
            SweepOptions(sweep="mem", config=tmp_path / "experiments.yaml", quiet=True), log=lambda _m: None, on_event=on_event
        )
    assert result.counts["complete"] == TRIALS and len(after_trial) == TRIALS
    # Each trial's new model traces its step functions afresh; TensorFlow's retracing detector
    # counts those across trials (same code object) and would warn from the third trial on.
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]

    # Trial 1 may leave process-wide one-offs (the shared decoded validation cache's graphs);
    # later trials must add nothing. Before the fix each trial left its train step
    # (`one_step_on_data`) and ~56 optimizer update graphs (`adam_*`) alive.
    first, last = after_trial[0], after_trial[-1]
    new = sorted(set(last) - set(first))
    assert len(last) <= len(first), f"{len(last) - len(first)} more live FuncGraphs after {TRIALS} trials: {new[:10]}"
    assert not [name for name in last if name.startswith(("one_step_on_data", "adam"))], last[:10]
