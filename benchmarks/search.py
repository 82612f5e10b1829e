"""Search efficiency on real photos at equal wall-clock budget (issue 7 benchmark 3, issue 13).

Five ways to end up with a flower classifier, each given the same wall-clock budget on this
machine, one after another, on the flowers5 photos (``--data DIR``, default
``$FLOWER_EXP_BENCH_DATA``; the real photos are never copied into the repository):

* ``default``      — ``flower_exp.sweep`` with the default sweep for a CPU (``sweeps/cpu.yaml``),
  then ``best --export`` and the export scored on the test split;
* ``random``       — the same file with ``sampler: random`` and ``pruner: none``, same ending;
* ``kt-hyperband`` and ``kt-random`` — Keras Tuner Hyperband and RandomSearch over the same
  ``params`` (and ``fixed`` settings), the model of ``get_best_models(1)`` scored on the test split;
* ``long-run``     — no search: the sweep's first ``enqueue`` configuration over its ``fixed``
  settings, trained by ``flower_exp.train`` for the whole budget (epochs raised, early
  stopping off), then exported and scored like the sweeps.

What is equal: the budget (every method is over by it, the trial running at that moment
included: flower-exp stops it at an epoch boundary itself, Keras Tuner is stopped by a callback
at the last epoch end that leaves time for another epoch), the search space and training
settings (read from the sweep file at run time), the data, the machine, the seed (sampler or
tuner seed and the training seed), the training code pieces (flower-exp's models, input
pipeline, LR schedule and streaming macro-F1 on Keras' validation pass). Selecting and
exporting the final predictor (``best --export``, ``get_best_models``) is timed separately
and is not part of the budget for any method.

Measured per (method, seed): the timestamped validation macro-F1 of every epoch trained (the
anytime curve: best so far against wall-clock minutes), epochs and trials, and the test
accuracy and macro-F1 of the predictor the method ends with.

Every (method, seed) runs in a fresh subprocess in its own project folder and writes
``<work>/runs/<method>-seed<k>.json``; rerunning skips the pairs that have one, so the
benchmark can run in several sittings. After each pair (and with ``--report-only``) the pairs
that exist are aggregated into ``<out>/search.json`` and ``search.png``.

    FLOWER_EXP_BENCH_DATA=<flowers5 folder> .venv/bin/python benchmarks/search.py
    .venv/bin/python benchmarks/search.py [--data DIR] [--budget-min M] [--seeds 1,2,3]
        [--methods default,random,kt-hyperband,kt-random,long-run] [--work DIR] [--out DIR]
        [--report-only] [--dry-run] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "search"
TITLE = "Search efficiency on real photos at equal wall-clock budget"
# The goal; GOAL_MARGIN is its "+ 2 points" of test accuracy.
GOAL_MARGIN = 0.02
MIN_SEEDS = 3
GOAL = (
    f"flowers5, equal wall-clock budget, median of >= {MIN_SEEDS} seeds: flower-exp's final test accuracy >= the "
    f"best other method + {GOAL_MARGIN * 100:g} points, and its anytime curve at or above every other method's "
    "after its first completed trial"
)

# slug -> name shown in the report; the order of the table and of the work within a seed.
METHODS = {
    "default": "flower-exp default search",
    "random": "flower-exp random, no pruning",
    "kt-hyperband": "Keras Tuner Hyperband",
    "kt-random": "Keras Tuner RandomSearch",
    "long-run": "one long run of the default configuration",
}
FLOWER_EXP = "default"

DATA_ENV = "FLOWER_EXP_BENCH_DATA"
SWEEP_FILE = common.REPO_ROOT / "sweeps" / "cpu.yaml"
DEFAULT_WORK = common.REPO_ROOT / "benchmarks" / "results" / "search-runs"
DEFAULT_SEEDS = (1, 2, 3)
# A hand-written log of each sitting's conditions (machine speed, other load), kept beside runs/.
SITTINGS_FILE = "sittings.md"
# One seed's five pairs take about two hours; pairs further apart ran in different sittings.
SITTING_H = 6
# The budget cpu.yaml's own usage line gives (--budget 30m). 5 methods x 3 seeds x 30 minutes
# = 7.5 hours of searching plus exports: several sittings on a 2-core machine.
DEFAULT_BUDGET_MIN = 30.0
# The sweep is stopped by its budget; this only has to be more trials than fit in it.
TRIALS = 10_000
EXPERIMENT = "bench"
# Training settings of the benchmark's experiment that the sweep file may override. A batch
# of 32 is the CPU demo's; the shuffle buffer holds a few thousand encoded records (KBs each).
BATCH = 32
SHUFFLE_BUFFER = 2048
TEST_BATCH = 64
# Points of the anytime curves compared for the goal (and drawn).
CURVE_POINTS = 400

# --smoke: generated demo data (tiny, 32 px, 2 classes) and a tiny copy of the sweep format
# (params, fixed, enqueue), one seed, every method; a work dir of its own.
SMOKE_BUDGET_MIN = 0.2
SMOKE_DATA = {"classes": 2, "per_class": 20, "sizes": [32], "seed": 0, "shards": 2}
SMOKE_SPACE = {
    "params": {
        "cnn_width": {"choices": [8, 16]},
        "dropout": {"low": 0.0, "high": 0.4},
        "lr_max": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
    },
    "fixed": {
        "architecture": "cnn",
        "weights": "none",
        "image_size": 32,
        "cnn_depth": 2,
        "epochs": 3,
        "lr_rampup_epochs": 0,
        "lr_sustain_epochs": 1,
    },
    "enqueue": [{"cnn_width": 8, "dropout": 0.2, "lr_max": 1.0e-3}],
}


class BudgetSpent(KeyboardInterrupt):
    """Ends a Keras Tuner search when its budget leaves no time for another trial.

    A KeyboardInterrupt so that Keras Tuner treats it as the user stopping the search (it
    re-raises instead of recording a failed trial and carrying on).
    """


class EpochLog:
    """Every epoch one method trains, timestamped from the start of its search."""

    def __init__(self):
        self.start = time.time()
        self.epochs: list[dict[str, Any]] = []
        self.trials = 0
        self.first_trial_end_s: float | None = None

    def elapsed(self) -> float:
        """Seconds since the search started."""
        return time.time() - self.start

    def trial_started(self) -> None:
        """One more trial (a new configuration) started training."""
        self.trials += 1

    def trial_ended(self) -> None:
        """A trial ended (finished, pruned or stopped); the first end starts the goal's curve comparison."""
        if self.first_trial_end_s is None:
            self.first_trial_end_s = round(self.elapsed(), 2)

    def epoch(self, trial: int, epoch: int, value: float) -> None:
        """Record the validation macro-F1 of one trained epoch."""
        self.epochs.append(
            {"t_s": round(self.elapsed(), 2), "trial": int(trial), "epoch": int(epoch), "val_f1": round(float(value), 6)}
        )


def best_so_far_at(epochs: list[dict[str, Any]], times: list[float]) -> list[float]:
    """Best val macro-F1 of the epochs ended by each of ``times`` (seconds; NaN before the first)."""
    ordered = sorted(epochs, key=lambda e: e["t_s"])
    curve, best, i = [], float("nan"), 0
    for t in times:
        while i < len(ordered) and ordered[i]["t_s"] <= t:
            value = ordered[i]["val_f1"]
            best = value if math.isnan(best) else max(best, value)
            i += 1
        curve.append(best)
    return curve


# --------------------------------------------------------------------------- the plan


def run_path(work: Path, method: str, seed: int) -> Path:
    """The result file of one (method, seed)."""
    return work / "runs" / f"{method}-seed{seed}.json"


def plan(seeds: list[int], methods: list[str]) -> list[tuple[str, int]]:
    """Every (method, seed) in running order: seed-major, so a partial sitting leaves complete
    seeds; within a seed the method order rotates by one per seed, so no method always runs
    first (a machine's slow spell or warm caches hit them all alike)."""
    order = []
    for i, seed in enumerate(seeds):
        shift = i % len(methods)
        order += [(m, seed) for m in methods[shift:] + methods[:shift]]
    return order


def pending(work: Path, seeds: list[int], methods: list[str]) -> list[tuple[str, int]]:
    """The pairs of :func:`plan` that have no result file yet."""
    return [(m, s) for m, s in plan(seeds, methods) if not run_path(work, m, s).exists()]


def load_runs(work: Path) -> list[dict[str, Any]]:
    """Every per-run result in ``work``, in method then seed order."""
    runs = []
    for path in sorted((work / "runs").glob("*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"search.py: {path}: not valid JSON ({exc}); delete it to rerun that pair") from None
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(runs, key=lambda r: (rank.get(r["method"], len(rank)), r["seed"]))


def check_comparable(runs: list[dict[str, Any]], budget_min: float | None = None, space: str | None = None) -> None:
    """Stop with one line if the results in a work dir were measured with another budget or
    search space than each other or than the run about to start: they would not compare."""
    budgets = {r["budget_min"] for r in runs} | ({budget_min} if budget_min is not None else set())
    spaces = {r["space_sha256"] for r in runs} | ({space} if space is not None else set())
    if len(budgets) > 1 or len(spaces) > 1:
        seen = ", ".join(f"{b:g} min" for b in sorted(budgets))
        raise SystemExit(
            f"search.py: the work dir holds runs of another budget or search space ({seen}); "
            "continue with the same --budget-min and sweep file, or choose another --work"
        )


def space_sha256(text: str) -> str:
    """Fingerprint of the sweep file text, recorded with every run."""
    return hashlib.sha256(text.encode()).hexdigest()


def space_text(smoke: bool) -> str:
    """The sweep file every method reads: ``sweeps/cpu.yaml`` as it is, or the smoke space."""
    if smoke:
        return yaml.safe_dump(SMOKE_SPACE, sort_keys=False)
    if not SWEEP_FILE.is_file():
        raise SystemExit(f"search.py: {SWEEP_FILE}: not found; it is the default CPU sweep every method reads")
    return SWEEP_FILE.read_text()


# --------------------------------------------------------------------------- one (method, seed)


def native_size(data_dir: Path) -> int:
    """The largest ``tfrecords-jpeg-SxS`` size of a dataset (flower-exp resizes down from it)."""
    sizes = [int(p.name.split("-")[-1].split("x")[0]) for p in data_dir.glob("tfrecords-jpeg-*x*") if p.is_dir()]
    if not sizes:
        raise SystemExit(f"search.py: {data_dir}: no tfrecords-jpeg-SxS folder; expected the competition layout")
    return max(sizes)


def write_project(root: Path, data_dir: Path, seed: int, smoke: bool, sweep_text: str, method: str) -> tuple[Path, Path]:
    """A fresh flower-exp project for one (method, seed): experiments.yaml (the data, training
    seed = the benchmark seed) and the sweep file of the method; MLflow and Optuna live inside."""
    if root.exists():
        shutil.rmtree(root)  # a crashed earlier attempt: start clean, its time is not comparable
    root.mkdir(parents=True)
    experiment: dict[str, Any] = {
        "data_dir": str(data_dir),
        "seed": seed,
        "batch_size_per_replica": BATCH,
        "shuffle_buffer": SHUFFLE_BUFFER,
    }
    if smoke:
        experiment.update(generate=SMOKE_DATA, image_size=SMOKE_DATA["sizes"][0])
    else:
        experiment["image_size"] = native_size(data_dir)
    config = root / "experiments.yaml"
    config.write_text(yaml.safe_dump({"default": EXPERIMENT, "experiments": {EXPERIMENT: experiment}}, sort_keys=False))
    sweep = root / "sweeps" / "search.yaml"
    sweep.parent.mkdir()
    if method == "random":
        from flower_exp.yaml_io import load_yaml

        body = load_yaml(sweep_text, str(SWEEP_FILE))
        body.update(sampler={"name": "random", "seed": seed}, pruner={"name": "none"})
        sweep.write_text(yaml.safe_dump(body, sort_keys=False))
    else:
        sweep.write_text(sweep_text)
    return config, sweep


def run_flower_exp_sweep(config: Path, sweep: Path, seed: int, budget_min: float, log: EpochLog, say) -> tuple[str, str]:
    """One flower-exp sweep until the budget; returns (study name, what stopped it)."""
    import flower_exp

    study = f"search-seed{seed}"

    def on_event(event: dict) -> None:
        if event["kind"] == "trial_start":
            log.trial_started()
        elif event["kind"] == "epoch":
            log.epoch(event["number"], event["epoch"], event["value"])
        elif event["kind"] == "trial_end":
            log.trial_ended()

    result = flower_exp.sweep(
        config=str(config),
        experiment=EXPERIMENT,
        sweep=str(sweep),
        study_name=study,
        seed=seed,
        trials=TRIALS,
        budget_min=budget_min,
        quiet=True,
        log=say,
        on_event=on_event,
    )
    done = sum(result.counts.get(k, 0) for k in ("finished", "pruned"))
    return study, "budget" if done < TRIALS else "trials"


def default_configuration(sweep_cfg) -> dict[str, Any]:
    """The sweep's default configuration: its first ``enqueue`` entry over its ``fixed`` settings."""
    if not sweep_cfg.enqueue:
        raise SystemExit(f"search.py: {SWEEP_FILE.name} has no enqueue entry, so no default configuration for the long run")
    return {**sweep_cfg.fixed, **sweep_cfg.enqueue[0]}


def run_long(config: Path, sweep: Path, budget_min: float, log: EpochLog) -> str:
    """The default configuration trained until the budget; returns what stopped it."""
    import keras

    import flower_exp
    from flower_exp.config import load_experiment, load_sweep

    sweep_cfg = load_sweep(sweep, load_experiment(EXPERIMENT, config).config)
    # JSON is YAML, so every value reads back as the type it has in the sweep file.
    overrides = [f"{k}={json.dumps(v)}" for k, v in default_configuration(sweep_cfg).items()]
    # Only the length changes: as many epochs as the budget allows, no early stop before it.
    overrides += ["epochs=1000", "early_stopping_patience=0"]

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log.epoch(0, epoch + 1, logs["val_macro_f1"])

    log.trial_started()
    result = flower_exp.train(
        EXPERIMENT, set=overrides, config=str(config), budget_min=budget_min, progress=None, callbacks=[Record()]
    )
    log.trial_ended()
    return "budget" if result.state == "stopped" else result.state


def export_and_score(config: Path, study: str | None, data_dir: Path, folder: Path, say) -> dict[str, Any]:
    """``best --export`` (the study's, or the experiment's runs for the long run) and the export
    scored once on the test split."""
    import flower_exp
    from flower_exp.export_format import load_export
    from flower_exp.predictor import predict_test, read_labels

    start = time.time()
    result = flower_exp.best(
        config=str(config), experiment=EXPERIMENT, study=study, export=str(folder / "export"), force=True, log=say
    )
    export_s = time.time() - start
    ens = load_export(str(folder / "export"))
    labels_csv = str(data_dir / "test_labels.csv")
    csv_path, macro_f1 = predict_test(ens, str(data_dir), str(folder / "test-predictions.csv"), labels_csv=labels_csv)
    labels = read_labels(labels_csv, len(ens.class_names))
    predicted = read_labels(csv_path, len(ens.class_names))
    accuracy = sum(predicted[i] == labels[i] for i in predicted) / len(predicted)
    return {
        "export_s": round(export_s, 2),
        "test_accuracy": round(accuracy, 6),
        "test_macro_f1": round(macro_f1, 6),
        "test_images": len(predicted),
        "predictor": f"{len(result.exported_members)} member(s) of best --export",
    }


def run_keras_tuner(
    kind: str, config: Path, sweep: Path, seed: int, budget_min: float, data_dir: Path, log: EpochLog, project: Path
) -> dict[str, Any]:
    """A Keras Tuner search over the sweep file's space until the budget, then its
    ``get_best_models(1)`` scored on the test split."""
    import keras
    import keras_tuner as kt
    import numpy as np

    from flower_exp.config import apply_values, load_experiment, load_sweep
    from flower_exp.data import pipeline
    from flower_exp.data.dataset import open_data
    from flower_exp.ensemble import macro_f1
    from flower_exp.metrics import MacroF1
    from flower_exp.models import create_model, normalization_for
    from flower_exp.predictor import read_labels
    from flower_exp.train import schedule_for

    # flower-exp drops TensorFlow's false alarm about Keras' step functions being retraced
    # (every trial's new model makes new ones); the same for the tuner's trials.
    logging.getLogger("tensorflow").addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
    exp = load_experiment(EXPERIMENT, config)
    sweep_cfg = load_sweep(sweep, exp.config)
    conditional = [name for name, spec in sweep_cfg.params.items() if spec.when]
    if conditional:
        raise SystemExit(
            f"search.py: {SWEEP_FILE.name}: params {', '.join(conditional)} have 'when:' conditions, which "
            "this benchmark does not map onto Keras Tuner; drop them or extend run_keras_tuner"
        )
    data = open_data(exp)
    num_classes = len(data.class_names)
    deadline = log.start + 60.0 * budget_min

    def configuration(hp):
        # The sweep's own mapping (study.sampling.suggest): choices, int ranges, float ranges, log scale.
        values = {}
        for name, spec in sweep_cfg.params.items():
            sampling = "log" if spec.log else "linear"
            if spec.choices is not None:
                values[name] = hp.Choice(name, spec.choices)
            elif spec.is_int:
                values[name] = hp.Int(
                    name, int(spec.low), int(spec.high), step=int(spec.step) if spec.step else None, sampling=sampling
                )
            else:
                values[name] = hp.Float(name, spec.low, spec.high, step=spec.step, sampling=sampling)
        return apply_values(exp.config, {**sweep_cfg.fixed, **values}, sweep, "keras-tuner trial")

    class Clock(keras.callbacks.Callback):
        """Records each epoch and ends the search at the budget, as flower-exp's own budget
        does: the running trial stops at the last epoch end that leaves time for another epoch
        (Keras Tuner then ends it as usual, its best epoch checkpointed and scored, as flower-exp
        keeps a budget-stopped trial's best epoch), and no new trial starts whose first epoch
        (model and pipelines included) would not fit."""

        def __init__(self):
            super().__init__()
            self.trial = 0
            self.longest_first_epoch_s = 0.0
            self.trial_start = self.epoch_start = time.time()
            self.first = True
            self.armed = True  # off after the search: get_best_models builds models too
            self.spent = False

        def new_trial(self) -> None:
            if self.armed and (self.spent or time.time() + self.longest_first_epoch_s > deadline):
                raise BudgetSpent()
            self.trial_start, self.first = time.time(), True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            now = time.time()
            log.epoch(self.trial, epoch + 1, float(logs["val_macro_f1"]))
            if self.first:
                self.longest_first_epoch_s = max(self.longest_first_epoch_s, now - self.trial_start)
                self.first = False
            if now + (now - self.epoch_start) > deadline:
                # Not an exception here: fit returns and the tuner records the trial normally.
                self.spent = self.model.stop_training = True

        def on_train_end(self, logs=None):
            log.trial_ended()

    clock = Clock()

    class EarlyStop(keras.callbacks.Callback):
        """flower-exp's early stopping (callbacks.BestEpoch's rule), so a configuration with
        ``early_stopping_patience`` trains as long under Keras Tuner as in a flower-exp trial:
        stop once ``patience`` epochs brought no better val macro-F1, never before ``start``."""

        def __init__(self, patience: int, start: int):
            super().__init__()
            self.patience, self.start, self.best, self.wait = patience, start, -1.0, 0

        def on_epoch_end(self, epoch, logs=None):
            value = float(logs["val_macro_f1"])
            if value > self.best:
                self.best, self.wait = value, 0
                return
            self.wait += 1
            if self.patience and self.wait >= self.patience and epoch + 1 > self.start:
                self.model.stop_training = True

    class HyperModel(kt.HyperModel):
        def build(self, hp):
            clock.new_trial()
            cfg = configuration(hp)
            keras.utils.set_random_seed(cfg.seed)
            model = create_model(
                cfg.architecture,
                num_classes=num_classes,
                image_size=cfg.image_size,
                weights=cfg.weights,
                dropout=cfg.dropout,
                cnn_width=cfg.cnn_width,
                cnn_depth=cfg.cnn_depth,
                cnn_dropout=cfg.cnn_dropout,
                cnn_bn_momentum=cfg.cnn_bn_momentum,
            )
            # flower-exp's compile: the objective is the streaming macro-F1 of Keras' own
            # validation pass, so it costs what a flower-exp trial's does.
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=schedule_for(cfg).lr(0, 1)),
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(num_classes)],
                jit_compile=cfg.jit_compile,
                steps_per_execution=cfg.steps_per_execution,
            )
            return model

        def fit(self, hp, model, *args, callbacks=(), **kwargs):
            cfg = configuration(hp)
            schedule = schedule_for(cfg)
            normalization = normalization_for(cfg.architecture)
            train_files = pipeline.split_files(data.root, "train", cfg.image_size)
            train = pipeline.make_dataset(
                data.root,
                "train",
                image_size=cfg.image_size,
                batch_size=cfg.batch_size_per_replica,
                normalization=normalization,
                augment_cfg=cfg.augment,
                shuffle_buffer=cfg.shuffle_buffer,
                seed=cfg.seed,
                num_classes=num_classes,
            )
            val = pipeline.make_dataset(
                data.root,
                "val",
                image_size=cfg.image_size,
                batch_size=cfg.batch_size_per_replica,
                normalization=normalization,
                num_classes=num_classes,
            )
            if kwargs.get("initial_epoch", 0) == 0:
                # A new configuration; Hyperband's later rounds continue an earlier trial's weights.
                log.trial_started()
            clock.trial += 1
            lr = keras.callbacks.LearningRateScheduler(lambda e, _lr: schedule.lr(e, 1))
            start = cfg.early_stopping_start_epoch
            stop = EarlyStop(
                cfg.early_stopping_patience, cfg.lr_rampup_epochs + cfg.lr_sustain_epochs if start is None else start
            )
            # The clock last: it times the epoch with every other callback's work included.
            return model.fit(
                train,
                steps_per_epoch=pipeline.steps_per_epoch(train_files.count, cfg.batch_size_per_replica, False),
                validation_data=val,
                callbacks=[lr, stop, *callbacks, clock],
                shuffle=False,
                **{"verbose": 0, **kwargs},
            )

    class NoTensorBoard:
        # Keras Tuner imports tensorboard on every trial under the TensorFlow backend only to
        # patch TensorBoard callbacks; we pass none, and tensorboard is not a dependency.
        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            pass

    class Hyperband(NoTensorBoard, kt.Hyperband):
        pass

    class RandomSearch(NoTensorBoard, kt.RandomSearch):
        pass

    trial_epochs = int(sweep_cfg.fixed.get("epochs", exp.config.epochs))
    common_args = dict(
        objective=kt.Objective("val_macro_f1", "max"),
        seed=seed,
        directory=str(project / "keras-tuner"),
        project_name=kind,
        overwrite=True,
    )
    if kind == "kt-hyperband":
        tuner = Hyperband(HyperModel(), max_epochs=trial_epochs, hyperband_iterations=TRIALS, **common_args)
    else:
        tuner = RandomSearch(HyperModel(), max_trials=TRIALS, **common_args)
    stopped_by = "trials"
    try:
        tuner.search(epochs=trial_epochs, verbose=0)
    except BudgetSpent:
        stopped_by = "budget"
    clock.armed = False
    wall_s = log.elapsed()

    start = time.time()
    best_trial = tuner.oracle.get_best_trials(1)[0]
    model = tuner.get_best_models(1)[0]
    export_s = time.time() - start
    cfg = configuration(best_trial.hyperparameters)
    test = pipeline.make_dataset(
        data.root, "test", image_size=cfg.image_size, batch_size=TEST_BATCH, normalization=normalization_for(cfg.architecture)
    )
    ids, probs = [], []
    for images, batch_ids in test:
        ids += [i.decode("utf-8") for i in batch_ids.numpy()]
        probs.append(model.predict_on_batch(images))
    labels = read_labels(str(data_dir / "test_labels.csv"), num_classes)
    truth = np.array([labels[i] for i in ids])
    probs = np.concatenate(probs)
    return {
        "wall_s": round(wall_s, 2),
        "stopped_by": stopped_by,
        "export_s": round(export_s, 2),
        "test_accuracy": round(float((probs.argmax(axis=1) == truth).mean()), 6),
        "test_macro_f1": round(macro_f1(probs, truth, num_classes), 6),
        "test_images": len(ids),
        "predictor": f"get_best_models(1): trial {best_trial.trial_id}",
    }


def run_one(method: str, seed: int, budget_min: float, data_dir: Path, work: Path, smoke: bool) -> Path:
    """Run one (method, seed) in this process and write its result file."""
    from flower_exp._imports import tensorflow

    tensorflow()  # imported before the clock starts, for every method alike
    text = space_text(smoke)
    project = work / "projects" / f"{method}-seed{seed}"
    config, sweep = write_project(project, data_dir, seed, smoke, text, method)
    os.chdir(project)  # anything a library writes to the working directory stays in the project

    def say(message: str) -> None:
        common.log(f"{method} seed {seed}: {message}")

    from flower_exp.config import load_experiment
    from flower_exp.data.dataset import open_data

    # Generates the smoke run's demo data on first use: before the clock, not in one method's budget.
    open_data(load_experiment(EXPERIMENT, config), log=say)
    log = EpochLog()
    if method in ("default", "random", "long-run"):
        if method == "long-run":
            study, stopped_by = None, run_long(config, sweep, budget_min, log)
        else:
            study, stopped_by = run_flower_exp_sweep(config, sweep, seed, budget_min, log, say)
        wall_s = round(log.elapsed(), 2)  # the clock stops before selection and export
        outcome = {"wall_s": wall_s, "stopped_by": stopped_by, **export_and_score(config, study, data_dir, project, say)}
    else:
        outcome = run_keras_tuner(method, config, sweep, seed, budget_min, data_dir, log, project)
    scores = [e["val_f1"] for e in log.epochs]
    result = {
        "method": method,
        "seed": seed,
        "budget_min": budget_min,
        "smoke": smoke,
        "data": data_dir.name,
        "space": "smoke space" if smoke else f"sweeps/{SWEEP_FILE.name}",
        "space_sha256": space_sha256(text),
        **outcome,
        "epochs": len(log.epochs),
        "trials": log.trials,
        "first_trial_end_s": log.first_trial_end_s,
        "best_val_f1": max(scores) if scores else None,
        "machine": common.machine_info(),
        "date": common.utc_now(),
        "code_version": common.code_version(),
        "epoch_log": log.epochs,
    }
    path = common.write_json_atomic(run_path(work, method, seed), result)
    say(
        f"{len(log.epochs)} epochs in {log.trials} trials, {outcome['wall_s'] / 60:.1f} min ({outcome['stopped_by']}), "
        f"best val F1 {result['best_val_f1']}, test accuracy {outcome['test_accuracy']:.4f}, "
        f"macro-F1 {outcome['test_macro_f1']:.4f}"
    )
    return path


# --------------------------------------------------------------------------- report


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method medians, the anytime curves and, with >= MIN_SEEDS seeds every method has
    completed, the goal verdict (else None)."""
    budget_s = 60.0 * runs[0]["budget_min"]
    times = [budget_s * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
    by_method = {m: [r for r in runs if r["method"] == m] for m in METHODS}
    present = [m for m in METHODS if by_method[m]]
    curves = {m: [best_so_far_at(r["epoch_log"], times) for r in by_method[m]] for m in present}
    seed_sets = [{r["seed"] for r in by_method[m]} for m in METHODS]
    common_seeds = sorted(set.intersection(*seed_sets)) if all(seed_sets) else []
    s: dict[str, Any] = {
        "times": times,
        "by_method": by_method,
        "present": present,
        "curves": curves,
        "common_seeds": common_seeds,
        "goal_met": None,
    }
    if len(common_seeds) < MIN_SEEDS:
        return s

    def median_curve(method):
        rows = [best_so_far_at(r["epoch_log"], times) for r in by_method[method] if r["seed"] in common_seeds]
        return [_nanmedian([row[i] for row in rows]) for i in range(len(times))]

    med_acc = {m: common.median(r["test_accuracy"] for r in by_method[m] if r["seed"] in common_seeds) for m in METHODS}
    others = [m for m in METHODS if m != FLOWER_EXP]
    rival = max(others, key=lambda m: med_acc[m])
    firsts = [r["first_trial_end_s"] for r in by_method[FLOWER_EXP] if r["seed"] in common_seeds]
    start = common.median(budget_s if f is None else f for f in firsts)
    ours = median_curve(FLOWER_EXP)
    theirs = {m: median_curve(m) for m in others}
    # From the median end of flower-exp's first trial on: below a rival where it has no score
    # yet or a lower one; a rival without a score yet is beaten.
    compared = [i for i, t in enumerate(times) if t >= start]
    below = {
        m: sum(1 for i in compared if not math.isnan(c[i]) and (math.isnan(ours[i]) or ours[i] < c[i])) for m, c in theirs.items()
    }
    accuracy_ok = med_acc[FLOWER_EXP] >= med_acc[rival] + GOAL_MARGIN
    curve_ok = not any(below.values())
    s.update(
        med_acc=med_acc,
        rival=rival,
        curve_start_s=start,
        compared=len(compared),
        below=below,
        accuracy_ok=accuracy_ok,
        curve_ok=curve_ok,
        goal_met=bool(accuracy_ok and curve_ok),
    )
    return s


def split_seeds(runs: list[dict[str, Any]]) -> list[str]:
    """The seeds whose pairs started more than SITTING_H hours apart, as ``seed k: first - last``."""
    from datetime import datetime

    out = []
    for seed in sorted({r["seed"] for r in runs}):
        dates = sorted(datetime.fromisoformat(r["date"]) for r in runs if r["seed"] == seed)
        if (dates[-1] - dates[0]).total_seconds() > SITTING_H * 3600:
            out.append(f"seed {seed}: {dates[0]:%Y-%m-%d %H:%M} - {dates[-1]:%Y-%m-%d %H:%M}")
    return out


def _nanmedian(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return common.median(kept) if kept else float("nan")


def _cell(values: list[float | None], fmt: str) -> str:
    """``median (seed values)``; the median first so the cell reads (and parses) as one number."""
    shown = [v for v in values if v is not None]
    if not shown:
        return "-"
    return f"{format(common.median(shown), fmt)} ({', '.join(format(v, fmt) for v in shown)})"


def table(s: dict[str, Any]) -> str:
    """One row per method: medians with the per-seed values in seed order."""
    rows = []
    for m in s["present"]:
        runs = s["by_method"][m]
        rows.append(
            [
                METHODS[m],
                ", ".join(str(r["seed"]) for r in runs),
                _cell([r["test_accuracy"] for r in runs], ".4f"),
                _cell([r["test_macro_f1"] for r in runs], ".4f"),
                _cell([r["best_val_f1"] for r in runs], ".4f"),
                _cell([r["epochs"] for r in runs], "g"),
                _cell([r["trials"] for r in runs], "g"),
                _cell([r["wall_s"] / 60 for r in runs], ".1f"),
                _cell([r["export_s"] for r in runs], ".0f"),
            ]
        )
    return common.md_table(
        [
            "method",
            "seeds",
            "test accuracy",
            "test macro-F1",
            "best val macro-F1",
            "epochs trained",
            "trials",
            "search minutes",
            "export seconds",
        ],
        rows,
    )


def plot(s: dict[str, Any], budget_min: float, path: Path) -> None:
    """Best-so-far val macro-F1 against wall-clock minutes: a thin line per seed, a bold median
    per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [t / 60 for t in s["times"]]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, m in enumerate(s["present"]):
        color = f"C{i}"
        for curve in s["curves"][m]:
            ax.plot(minutes, curve, color=color, lw=0.7, alpha=0.45)
        median = [_nanmedian([c[j] for c in s["curves"][m]]) for j in range(len(minutes))]
        ax.plot(minutes, median, color=color, lw=2.4, label=f"{METHODS[m]} (median of {len(s['curves'][m])})")
    ax.set_xlim(0, budget_min)
    ax.set_xlabel("wall-clock minutes of the search")
    ax.set_ylabel("best val macro-F1 so far")
    ax.set_title("Anytime performance at equal wall-clock budget")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def continue_command(args, budget_min: float) -> str:
    """The command that continues (or reproduces) this benchmark, with no path outside the repo."""
    parts = [] if args.smoke else [f"{DATA_ENV}=<flowers5 folder>"]
    parts += [".venv/bin/python", "benchmarks/search.py"]
    if args.smoke:
        parts.append("--smoke")
    parts += ["--budget-min", f"{budget_min:g}", "--seeds", ",".join(map(str, args.seeds))]
    if args.methods != list(METHODS):
        parts += ["--methods", ",".join(args.methods)]
    for flag, value, default in (("--work", args.work, DEFAULT_WORK), ("--out", args.out, common.DEFAULT_OUT)):
        if Path(value).resolve() != Path(default).resolve():
            parts += [flag, _repo_relative(Path(value))]
    return " ".join(parts)


def _repo_relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(common.REPO_ROOT))
    except ValueError:
        return "DIR"  # a folder outside the repository is not named in a result file


def report(args, budget_min: float) -> Path | None:
    """Aggregate the per-run results of the work dir into ``<out>/search.json`` and the plot."""
    runs = load_runs(args.work)
    if not runs:
        common.log(f"no results in {args.work / 'runs'} yet")
        return None
    check_comparable(runs, None, None)
    s = summarize(runs)
    png, rel = common.plot_path(args.out, f"{NAME}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(s, budget_min, png)
    wanted = len(args.seeds) * len(args.methods)
    done = sum(1 for m, seed in plan(args.seeds, args.methods) if run_path(args.work, m, seed).exists())
    if s["goal_met"] is None:
        so_far = "; ".join(
            f"{METHODS[m]} {common.median(r['test_accuracy'] for r in s['by_method'][m]):.4f} "
            f"({len(s['by_method'][m])} seed{'s' if len(s['by_method'][m]) > 1 else ''})"
            for m in s["present"]
        )
        measured = (
            f"{len(runs)} (method, seed) pairs done ({done} of the {wanted} planned); the goal is judged once "
            f"every method has {MIN_SEEDS} seeds. Test accuracy so far (median): {so_far}"
        )
    else:
        measured = (
            f"test accuracy {s['med_acc'][FLOWER_EXP]:.4f} (flower-exp default) vs {s['med_acc'][s['rival']]:.4f} "
            f"({METHODS[s['rival']]}, best other), median of {len(s['common_seeds'])} seeds at "
            f"{budget_min:g} min each; anytime curve at or above all others after its first trial: "
            f"{'yes' if s['curve_ok'] else 'no'}"
        )
    result = common.write_result(
        args.out,
        name=NAME,
        title=TITLE,
        goal=GOAL,
        goal_met=None if args.smoke else s["goal_met"],
        measured=measured,
        command=continue_command(args, budget_min),
        smoke=args.smoke,
        table_md=table(s),
        plots=[rel],
        notes_md="\n\n".join(notes(s, runs, budget_min, args, done, wanted)),
    )
    print(measured)
    return result


def notes(s: dict[str, Any], runs: list[dict[str, Any]], budget_min: float, args, done: int, wanted: int) -> list[str]:
    """What the methods are, what is equal, what is measured, and the verdict in words."""
    first = runs[0]
    machines = sorted({r["machine"] for r in runs})
    out = [
        f"Task: {'generated demo data (smoke run)' if args.smoke else first['data'] + ' photos'}; budget "
        f"{budget_min:g} wall-clock minutes per method and seed; search space and training settings from "
        f"`{first['space']}` (sha256 {first['space_sha256'][:12]}), read at run time. Each (method, seed) ran alone "
        "in a fresh process and a fresh project folder (its own MLflow store and Optuna journal), one after another, "
        "seed-major with the method order rotating per seed. The seed is the sampler's or tuner's seed and the "
        f"training seed; experiments.yaml sets batch {BATCH} per replica, shuffle buffer {SHUFFLE_BUFFER}, and the "
        "data's native image size (the sweep file's settings override them).",
        "Methods: **flower-exp default search** = `flower_exp.sweep` with the sweep file as it is, ending with "
        "`best --export` (default --top) and the export's test score; **flower-exp random** = the same file with "
        "`sampler: random`, `pruner: none`, same ending; **Keras Tuner Hyperband / RandomSearch** (stock settings, "
        "Hyperband's max_epochs = the file's trial epochs) over the same params and fixed settings, built from "
        "flower-exp's pieces (models.create_model, data.pipeline.make_dataset with the same augmentation and "
        "normalisation, the run's LR schedule, the streaming MacroF1 metric on Keras' validation pass as the "
        "objective), scoring the model of `get_best_models(1)`; **one long run** = the file's first enqueue entry "
        "over its fixed settings trained by `flower_exp.train` for the whole budget (epochs=1000, early stopping "
        "off; it keeps its best epoch), exported and scored like the sweeps.",
        "Equal: the wall-clock budget, counted from the start of each search with TensorFlow already imported. "
        "Every method stops its running trial at the last epoch end that leaves time for another epoch and "
        "keeps its best epoch (flower-exp's sweeps and long run by themselves, Keras Tuner through a callback that "
        "also starts no trial whose first epoch would not fit), so none trains past the budget. Selection and "
        "export (`best --export`, `get_best_models`) and "
        "test prediction are not part of the budget; their time is the export column.",
        "Measured: every trained epoch's val macro-F1 with its time; the curve is the best so far against minutes "
        "(thin: one seed, bold: median per method); test accuracy and macro-F1 of the final predictor on the "
        "held-out test split, scored once. Epochs trained show how much each method got done in the same time.",
        f"Machine{'s' if len(machines) > 1 else ''}: {'; '.join(machines)}.",
    ]
    if len(machines) > 1:
        out.append("**The runs come from more than one machine**: their minutes do not compare; rerun on one.")
    log = args.work / SITTINGS_FILE
    if log.is_file():
        # What no result file records: the conditions of each sitting, written by whoever ran it.
        out.append("Sittings (from `" + SITTINGS_FILE + "`):\n\n" + log.read_text(encoding="utf-8").strip())
    split = split_seeds(runs)
    if split:
        out.append(
            "**Some seeds' pairs ran in different sittings** (" + "; ".join(split) + "): a sitting may get another "
            "machine, or the same one may run at another speed (seen: one epoch of the same configuration took "
            "35 s in one sitting and 44 s in the next), so a seed's methods only compare within one sitting; "
            "rerun those seeds' pairs together."
        )
    if s["goal_met"] is None:
        out.append(
            f"Incomplete: {done} of {wanted} planned (method, seed) pairs are done ({len(runs)} result files in "
            f"the work dir); the goal needs {MIN_SEEDS} seeds of every method. Continue with "
            f"`{continue_command(args, budget_min)}` (it skips the finished pairs)."
        )
    else:
        verdict = (
            f"Goal {'met' if s['goal_met'] else 'missed'}: flower-exp's median test accuracy is "
            f"{s['med_acc'][FLOWER_EXP] - s['med_acc'][s['rival']]:+.4f} against the best other method "
            f"({METHODS[s['rival']]}; needed {GOAL_MARGIN:+.2f}). From the median end of its first trial "
            f"({s['curve_start_s'] / 60:.1f} min) its median curve is below "
        )
        below = [f"{METHODS[m]} at {n} of {s['compared']} time points" for m, n in s["below"].items() if n]
        out.append(verdict + ("; ".join(below) if below else "no other method's") + ".")
        if not s["goal_met"]:
            out.append(
                "The sweep defaults were not tuned to these photos to close the gap: flowers5 is one real-photo "
                "task among many, and a default that only helps here is not an improvement."
            )
    return out


# --------------------------------------------------------------------------- main


def parse(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=os.environ.get(DATA_ENV) or None,
        help=f"the flowers5 folder (tfrecords-jpeg-SxS layout; default ${DATA_ENV})",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        help=f"wall-clock minutes per method and seed (default: the work dir's runs', else {DEFAULT_BUDGET_MIN:g})",
    )
    parser.add_argument("--seeds", help=f"comma-separated seeds (default {','.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("--methods", help=f"comma-separated methods (default all: {','.join(METHODS)})")
    parser.add_argument(
        "--work",
        type=Path,
        help="folder of per-run results (runs/) and run projects (projects/) "
        "(default benchmarks/results/search-runs; with --smoke a temporary folder)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for search.json and search.png (default benchmarks/results; with --smoke a temporary folder)",
    )
    parser.add_argument("--report-only", action="store_true", help="aggregate the finished runs, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="list the (method, seed) pairs still to run, run nothing")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on tiny generated data (tests, CI)")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # METHOD:SEED, the child process of one pair
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([1] if args.smoke else list(DEFAULT_SEEDS))
    args.methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
    if args.budget_min is not None and not 0 < args.budget_min < math.inf:
        parser.error("--budget-min: must be a positive number of minutes")
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="flower-exp-bench-search-")) if args.smoke else DEFAULT_WORK
    args.out = common.output_folder(args.out, args.smoke)
    args.work = args.work.resolve()
    return args


def main(argv=None) -> int:
    args = parse(argv)
    runs = load_runs(args.work)
    budget_min = args.budget_min or (runs[0]["budget_min"] if runs else SMOKE_BUDGET_MIN if args.smoke else DEFAULT_BUDGET_MIN)
    if args.smoke:
        data_dir = args.work / "demo-data"  # generated by the first run from SMOKE_DATA
    elif args.data is not None:
        data_dir = args.data.resolve()
    else:
        data_dir = None
    if args.run_one:
        method, seed = args.run_one.split(":")
        run_one(method, int(seed), budget_min, data_dir, args.work, args.smoke)
        return 0
    if args.report_only:
        return 0 if report(args, budget_min) is not None else 1
    todo = pending(args.work, args.seeds, args.methods)
    if args.dry_run:
        for method, seed in todo:
            print(f"{method} seed {seed}")
        return 0
    if data_dir is None:
        print(f"search.py: no data: pass --data DIR or set ${DATA_ENV} to the flowers5 folder", file=sys.stderr)
        return 2
    check_comparable(runs, budget_min, space_sha256(space_text(args.smoke)))
    failed = []
    for i, (method, seed) in enumerate(todo, 1):
        common.log(f"[{i}/{len(todo)}] {METHODS[method]}, seed {seed}, {budget_min:g} min")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--run-one",
            f"{method}:{seed}",
            "--budget-min",
            str(budget_min),
            "--work",
            str(args.work),
            *(["--smoke"] if args.smoke else ["--data", str(data_dir)]),
        ]
        if subprocess.run(cmd, cwd=common.REPO_ROOT).returncode != 0:
            failed.append(f"{method} seed {seed}")
            common.log(f"{method} seed {seed}: failed; the other pairs go on, rerun to retry it")
        report(args, budget_min)
    if not todo:
        report(args, budget_min)
    if failed:
        print(f"search.py: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
