"""Search efficiency vs peers (issue 7, benchmark 3).

On one fixed demo task and a fixed budget of training epochs, four search strategies look
for the best validation macro-F1 over ONE search space:

* ``flower-exp TPE + Hyperband`` — ``flower_exp.sweep`` with its default sampler and pruner;
* ``flower-exp random``          — the same sweep with ``sampler: random`` and ``pruner: none``;
* ``Keras Tuner Hyperband`` and ``Keras Tuner RandomSearch`` — a hypermodel built from the
  same flower_exp pieces (``apply_values`` for the configuration, ``models.create_model``,
  ``data.pipeline.make_dataset``, the run's LR schedule, full-validation macro-F1), so only
  the search strategy differs.

Every epoch any method trains is counted (Hyperband and pruning stop trials early; Keras
Tuner's Hyperband resumes trials from checkpoints and trains only the new epochs). A method
stops the moment its budget is spent. The score of a method after ``n`` epochs is the best
validation macro-F1 of any epoch it has trained so far.

    .venv/bin/python benchmarks/search.py [--smoke] [--out DIR] [--seeds 1,2,3] [--budget N] [--trial-epochs N] [--jobs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "search"
TITLE = "Search efficiency vs Keras Tuner and random search"
GOAL = ("flower-exp (TPE + Hyperband) needs <= 0.35 of random search's epochs to reach the target score "
        "and matches or beats Keras Tuner's best score at equal budget")
MAX_EPOCH_RATIO = 0.35
# "Matches" Keras Tuner: at most this far below its median best score at equal budget.
MATCH_TOLERANCE = 0.01
# Target score: this fraction of the best score any method reached in the run.
TARGET_FRACTION = 0.95

METHODS = ("flower-exp TPE + Hyperband", "flower-exp random", "Keras Tuner Hyperband", "Keras Tuner RandomSearch")
FX_TPE, FX_RANDOM, KT_HYPERBAND, KT_RANDOM = METHODS

# The search space, written into the sweep files and mapped onto Keras Tuner's hp calls.
# It is the demo sweep's (sweeps/demo.yaml) at one image size.
SPACE = {
    "cnn_width": {"choices": [8, 16, 32]},
    "cnn_depth": {"low": 2, "high": 4},
    "dropout": {"low": 0.0, "high": 0.4},
    "lr_max": {"low": 3.0e-4, "high": 5.0e-3, "log": True},
    "lr_rampup_epochs": {"low": 0, "high": 3},
    "lr_sustain_epochs": {"low": 0, "high": 4},
    "lr_decay": {"low": 0.6, "high": 0.95},
}
# Early stopping is a training feature, not a search strategy: off for every method so they
# train a configuration identically.
FIXED = {"architecture": "cnn", "weights": "none", "early_stopping_patience": 0}


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark run."""

    seeds: tuple[int, ...]
    budget: int  # total training epochs per method and seed
    epochs: int  # epochs of a full trial (Hyperband's maximum)
    classes: int
    per_class: int
    image_size: int


# per_class is chosen so train (60%) and val (20%) are whole batches of 32: a ragged last
# batch makes Keras trace every trial's functions twice, doubling the wall time (not the epochs).
# 15 full trials per search: enough for TPE to leave its 5 random start-up trials behind, and
# 10-epoch trials outlast the sampled LR warm-up + sustain (up to 7 epochs).
FULL = Setup(seeds=(1, 2, 3), budget=150, epochs=10, classes=6, per_class=80, image_size=32)
SMOKE = Setup(seeds=(1,), budget=4, epochs=2, classes=2, per_class=20, image_size=32)


class BudgetSpent(KeyboardInterrupt):
    """Stops a search mid-trial once its epoch budget is spent.

    A KeyboardInterrupt so that Optuna, flower-exp and Keras Tuner treat it as the user
    stopping the search (they end cleanly and re-raise) instead of a failed trial to retry.
    """


class EpochLog:
    """Validation macro-F1 of every epoch one search trains, in order; raises
    :class:`BudgetSpent` after the epoch that spends the budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.scores: list[float] = []
        self.trials = 0

    def epoch(self, score: float) -> None:
        self.scores.append(float(score))
        if len(self.scores) >= self.budget:
            raise BudgetSpent()


def best_so_far(scores: list[float], budget: int) -> list[float]:
    """Best score after each of ``budget`` epochs (the last value carries on if a search
    ended before its budget)."""
    curve, best = [], float("nan")
    for i in range(budget):
        if i < len(scores):
            best = scores[i] if math.isnan(best) else max(best, scores[i])
        curve.append(best)
    return curve


def epochs_to(curve: list[float], target: float) -> int | None:
    """First epoch count at which ``curve`` reaches ``target`` (None: never)."""
    for i, value in enumerate(curve):
        if value >= target:
            return i + 1
    return None


# --------------------------------------------------------------------------- the task


def write_project(root: Path, setup: Setup, data_dir: Path) -> Path:
    """A flower-exp project (experiments.yaml + one sweep file per flower-exp method)."""
    experiment = {
        "data_dir": str(data_dir),
        "generate": {"classes": setup.classes, "per_class": setup.per_class, "sizes": [setup.image_size],
                     "seed": 0, "shards": 2},
        "image_size": setup.image_size,
        "batch_size_per_replica": 32,
        "shuffle_buffer": 512,
        "epochs": setup.epochs,
    }
    config = root / "experiments.yaml"
    config.write_text(yaml.safe_dump({"default": "bench", "experiments": {"bench": experiment}}, sort_keys=False))
    (root / "sweeps").mkdir(exist_ok=True)
    sweeps = {
        "tpe-hyperband": {"sampler": {"name": "tpe"}, "pruner": {"name": "hyperband"}},
        "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}},
    }
    for name, search in sweeps.items():
        body = {"trials": 10_000, **search, "params": SPACE, "fixed": {**FIXED, "epochs": setup.epochs}}
        (root / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return config


def data_cache(setup: Setup) -> Path:
    """The demo data lives outside the repo, generated once and reused by later runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flower-exp-bench" / f"demo-c{setup.classes}-p{setup.per_class}-s{setup.image_size}"


def run_flower_exp(config: Path, sweep: str, seed: int, budget: int) -> EpochLog:
    """One flower-exp sweep, stopped when ``budget`` epochs are spent."""
    import flower_exp

    log = EpochLog(budget)

    def on_event(event: dict) -> None:
        if event["kind"] == "trial_start":
            log.trials += 1
        elif event["kind"] == "epoch":
            log.epoch(event["value"])

    try:
        flower_exp.sweep(config=str(config), sweep=sweep, study_name=f"{sweep}-seed{seed}", seed=seed,
                         trials=10_000, quiet=True, log=lambda _m: None, on_event=on_event)
    except BudgetSpent:
        pass
    return log


def run_keras_tuner(config: Path, kind: str, seed: int, setup: Setup, workdir: Path) -> EpochLog:
    """One Keras Tuner search over the same space and training, stopped at the budget."""
    import keras
    import keras_tuner as kt
    import numpy as np
    from sklearn.metrics import f1_score

    from flower_exp.config import apply_values, load_experiment, resolve
    from flower_exp.data import pipeline
    from flower_exp.data.dataset import open_data
    from flower_exp.models import create_model, normalization_for
    from flower_exp.train import schedule_for

    exp = load_experiment("bench", config)
    data = open_data(exp)
    num_classes = len(data.class_names)
    log = EpochLog(setup.budget)

    def configuration(hp):
        values = {}
        for name, spec in SPACE.items():
            if "choices" in spec:
                values[name] = hp.Choice(name, spec["choices"])
            elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
                values[name] = hp.Int(name, spec["low"], spec["high"])
            else:
                values[name] = hp.Float(name, spec["low"], spec["high"], sampling="log" if spec.get("log") else "linear")
        cfg = apply_values(exp.config, {**FIXED, "epochs": setup.epochs, **values}, "keras-tuner", "trial")
        return resolve(cfg, Path(exp.config_path), os.environ).config

    class Validation(keras.callbacks.Callback):
        """Full-validation macro-F1 into the logs (the objective), as flower-exp computes it."""

        def __init__(self, images, labels):
            super().__init__()
            self.images, self.labels = images, labels

        def on_epoch_end(self, epoch, logs=None):
            predicted = self.model.predict(self.images, verbose=0).argmax(axis=1)
            f1 = float(f1_score(self.labels, predicted, average="macro", labels=np.arange(num_classes), zero_division=0))
            logs["val_macro_f1"] = f1
            log.epoch(f1)

    class HyperModel(kt.HyperModel):
        def build(self, hp):
            cfg = configuration(hp)
            keras.utils.set_random_seed(cfg.seed)
            schedule = schedule_for(cfg)
            model = create_model(cfg.architecture, num_classes=num_classes, image_size=cfg.image_size,
                                 weights=cfg.weights, dropout=cfg.dropout, cnn_width=cfg.cnn_width,
                                 cnn_depth=cfg.cnn_depth, cnn_dropout=cfg.cnn_dropout,
                                 cnn_bn_momentum=cfg.cnn_bn_momentum)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule.lr(0, 1)),
                          loss=keras.losses.SparseCategoricalCrossentropy(),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
            return model

        def fit(self, hp, model, *args, callbacks=(), **kwargs):
            cfg = configuration(hp)
            schedule = schedule_for(cfg)
            normalization = normalization_for(cfg.architecture)
            train_files = pipeline.split_files(data.root, "train", cfg.image_size)
            train = pipeline.make_dataset(data.root, "train", image_size=cfg.image_size, batch_size=cfg.batch_size_per_replica,
                                          normalization=normalization, augment_cfg=cfg.augment,
                                          shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, num_classes=num_classes)
            val = pipeline.make_dataset(data.root, "val", image_size=cfg.image_size, batch_size=cfg.batch_size_per_replica,
                                        normalization=normalization, num_classes=num_classes)
            labels = np.concatenate([y for _x, y in val.as_numpy_iterator()])
            images = val.map(lambda x, _y: x)
            if kwargs.get("initial_epoch", 0) == 0:
                log.trials += 1
            ours = [keras.callbacks.LearningRateScheduler(lambda e, _lr: schedule.lr(e, 1)), Validation(images, labels)]
            # Ours first: Keras Tuner's checkpoint callback reads val_macro_f1 from the logs.
            return model.fit(train, steps_per_epoch=pipeline.steps_per_epoch(train_files.count, cfg.batch_size_per_replica, False),
                             callbacks=[*ours, *callbacks], shuffle=False, **{"verbose": 0, **kwargs})

    class NoTensorBoard:
        # Keras Tuner imports tensorboard on every trial under the TensorFlow backend only to
        # patch TensorBoard callbacks; we pass none, and tensorboard is not a dependency.
        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            pass

    class Hyperband(NoTensorBoard, kt.Hyperband):
        pass

    class RandomSearch(NoTensorBoard, kt.RandomSearch):
        pass

    objective = kt.Objective("val_macro_f1", "max")
    common_args = dict(objective=objective, seed=seed, directory=str(workdir), project_name=f"{kind}-seed{seed}",
                       overwrite=True)
    if kind == "hyperband":
        tuner = Hyperband(HyperModel(), max_epochs=setup.epochs, factor=3, hyperband_iterations=1_000, **common_args)
    else:
        tuner = RandomSearch(HyperModel(), max_trials=10_000, **common_args)
    try:
        tuner.search(epochs=setup.epochs, verbose=0)
    except BudgetSpent:
        pass
    return log


# --------------------------------------------------------------------------- report


def summarize(setup: Setup, logs: dict[str, list[EpochLog]]) -> dict:
    """Curves, target, epochs to target and the goal verdict from every search's epoch log."""
    curves = {m: [best_so_far(lg.scores, setup.budget) for lg in logs[m]] for m in METHODS}
    finals = {m: [c[-1] for c in curves[m]] for m in METHODS}
    target = round(TARGET_FRACTION * max(max(v) for v in finals.values()), 4)
    to_target = {m: [epochs_to(c, target) for c in curves[m]] for m in METHODS}
    # A search that never reached the target is counted at the budget: a lower bound, noted.
    censored = {m: [setup.budget if e is None else e for e in to_target[m]] for m in METHODS}
    med_epochs = {m: common.median(censored[m]) for m in METHODS}
    med_final = {m: common.median(finals[m]) for m in METHODS}
    ratio = med_epochs[FX_TPE] / med_epochs[FX_RANDOM]
    kt_best = max(med_final[KT_HYPERBAND], med_final[KT_RANDOM])
    matches = med_final[FX_TPE] >= kt_best - MATCH_TOLERANCE
    return dict(curves=curves, finals=finals, target=target, to_target=to_target, med_epochs=med_epochs,
                med_final=med_final, ratio=ratio, kt_best=kt_best, matches=matches,
                goal_met=bool(ratio <= MAX_EPOCH_RATIO and matches))


def plot(setup: Setup, summary: dict, path: Path) -> None:
    """Median best-so-far score vs epochs spent, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    x = np.arange(1, setup.budget + 1)
    for method in METHODS:
        ax.plot(x, np.nanmedian(np.array(summary["curves"][method], dtype=float), axis=0), label=method, lw=1.8)
    ax.axhline(summary["target"], color="grey", ls="--", lw=1, label=f"target {summary['target']:.3f}")
    ax.set_xlabel("training epochs spent (all trials)")
    ax.set_ylabel("best val macro-F1 so far")
    ax.set_title(f"Search efficiency: median of {len(setup.seeds)} seed(s)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_epochs(values: list[int | None], budget: int) -> str:
    return ", ".join(f">{budget}" if v is None else str(v) for v in values)


def report(setup: Setup, logs: dict[str, list[EpochLog]], smoke: bool, out: Path, **fields) -> Path:
    """Write search.json (+ the curve PNG) and print the summary; ``fields`` override result
    keys (e.g. ``command``)."""
    s = summarize(setup, logs)
    png, rel = common.plot_path(out, f"{NAME}.png")
    out.mkdir(parents=True, exist_ok=True)
    plot(setup, s, png)
    rows = []
    for m in METHODS:
        rows.append([
            m,
            f"{s['med_final'][m]:.4f}",
            ", ".join(f"{v:.4f}" for v in s["finals"][m]),
            f"{s['med_epochs'][m]:g}",
            _fmt_epochs(s["to_target"][m], setup.budget),
            ", ".join(str(lg.trials) for lg in logs[m]),
            ", ".join(str(len(lg.scores)) for lg in logs[m]),
        ])
    table = common.md_table(
        ["method", "median best F1 at budget", "best F1 per seed", "median epochs to target",
         "epochs to target per seed", "trials started per seed", "epochs trained per seed"], rows)
    measured = (f"flower-exp TPE+Hyperband reached F1 {s['target']:.3f} in {s['ratio']:.2f}x random search's epochs "
                f"(median {s['med_epochs'][FX_TPE]:g} vs {s['med_epochs'][FX_RANDOM]:g}); best F1 at {setup.budget} epochs "
                f"{s['med_final'][FX_TPE]:.4f} vs Keras Tuner {s['kt_best']:.4f} (median of {len(setup.seeds)} seeds)")
    verdict = []
    if s["ratio"] > MAX_EPOCH_RATIO:
        verdict.append(f"the epoch ratio {s['ratio']:.2f} is above the {MAX_EPOCH_RATIO} goal")
    if not s["matches"]:
        verdict.append(f"flower-exp's best score is below Keras Tuner's by more than {MATCH_TOLERANCE}")
    startup, min_resource, factor = sweep_defaults()
    notes = [
        f"Task: flower-exp demo data ({setup.classes} classes, {setup.per_class} images per class split "
        f"~60/20/20, {setup.image_size} px), small CNN, full trial {setup.epochs} epochs, budget {setup.budget} "
        f"training epochs per method and seed; seeds {list(setup.seeds)} (sampler / tuner seeds; the training "
        "seed is the experiment's, the same for every method).",
        f"Search space (all methods): {', '.join(SPACE)}; fixed: {FIXED}. flower-exp runs use the sweep defaults "
        f"(TPE seeded multivariate with {startup} startup trials; Hyperband min_resource {min_resource}, reduction "
        f"factor {factor}) and the "
        "random baseline `sampler: random`, `pruner: none`. Keras Tuner: Hyperband(max_epochs="
        f"{setup.epochs}, factor=3), RandomSearch; its hypermodel builds the configuration with flower-exp's "
        "apply_values, the model with models.create_model, the data with data.pipeline.make_dataset and the LR "
        "with the run's schedule, and computes the objective `val_macro_f1` on the full validation split.",
        "Score after n epochs = best val macro-F1 of any epoch trained so far (a trial's score is its best epoch "
        f"for every method). Target = {TARGET_FRACTION} x the best score any method reached in this run "
        f"({s['target']:.4f}); a search that never reached it counts as {setup.budget} epochs (a lower bound). "
        f"'Matches' Keras Tuner = within {MATCH_TOLERANCE} of its better variant's median. Epochs, not seconds, "
        "are counted, so the shared machine's load does not bias the result.",
    ]
    reached = sum(e is not None for m in METHODS for e in s["to_target"][m])
    searches = len(METHODS) * len(setup.seeds)
    if reached < searches / 2:
        notes.append(f"Only {reached} of {searches} searches reached the target, so epochs-to-target are mostly "
                     f"censored at the budget and the epoch ratio says little; the best-score comparison and the "
                     "curve carry the result.")
    if verdict and not smoke:
        notes.append("Goal missed: " + "; ".join(verdict) + ". " + missed_note(s, setup))
    path = common.write_result(
        out, name=NAME, title=TITLE, goal=GOAL, goal_met=None if smoke else s["goal_met"], measured=measured,
        smoke=smoke, table_md=table, plots=[rel], notes_md="\n\n".join(notes), **fields,
    )
    print(measured)
    print(table)
    return path


def sweep_defaults() -> tuple[int, int, int]:
    """flower-exp's default TPE start-up trials, Hyperband min_resource and reduction factor."""
    from flower_exp.config import PrunerConfig, SamplerConfig

    pruner = PrunerConfig()
    return SamplerConfig().n_startup_trials, pruner.min_resource, pruner.reduction_factor


def missed_note(s: dict, setup: Setup) -> str:
    """Why a missed goal can happen on this task, and what would close it."""
    finals = [f for m in METHODS for f in s["finals"][m]]
    medians = sorted(s["med_final"].values())
    startup, min_resource, _ = sweep_defaults()
    warmup = SPACE["lr_rampup_epochs"]["high"] + SPACE["lr_sustain_epochs"]["high"]
    return (f"With {setup.budget / setup.epochs:.0f} full trials of {setup.epochs} epochs per search, the methods' median "
            f"best scores lie within {medians[-1] - medians[0]:.3f} of each other ({medians[0]:.3f}-{medians[-1]:.3f}) "
            f"while single searches range {min(finals):.3f}-{max(finals):.3f}: on this tiny demo task (synthetic "
            f"classes, {setup.image_size} px, a few hundred training images) the gap between configurations is "
            "smaller than the training noise of one configuration, so no search strategy can separate itself and "
            f"epochs-to-target is mostly censored. TPE only leaves its {startup} random start-up trials (the same "
            f"seeded draws as the random baseline) after {startup * setup.epochs} of the {setup.budget} epochs, and "
            f"flower-exp's Hyperband judges trials at epoch {min_resource}, inside the sampled LR warm-up + sustain "
            f"(up to {warmup} epochs). What would settle it: a task whose "
            "configurations differ by more than their noise (real flower photos at 192 px or more, the seed's "
            "EfficientNet/DenseNet space) and a longer budget on a GPU. The sampler and pruner defaults were "
            "deliberately not tuned to the demo data.")


def run_seeds(setup: Setup) -> dict[str, list[EpochLog]]:
    """Every method on every seed of ``setup``, in this process."""
    from flower_exp._imports import tensorflow

    tensorflow()
    logs: dict[str, list[EpochLog]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="flower-exp-bench-search-") as tmp:
        root = Path(tmp)
        config = write_project(root, setup, data_cache(setup))
        for seed in setup.seeds:
            # Alternate the methods within each seed so a slow spell of the machine hits them all.
            for method in METHODS:
                common.log(f"seed {seed}: {method}")
                if method == FX_TPE:
                    lg = run_flower_exp(config, "tpe-hyperband", seed, setup.budget)
                elif method == FX_RANDOM:
                    lg = run_flower_exp(config, "random", seed, setup.budget)
                else:
                    kind = "hyperband" if method == KT_HYPERBAND else "random"
                    lg = run_keras_tuner(config, kind, seed, setup, root / "keras-tuner")
                best = max(lg.scores) if lg.scores else float("nan")
                common.log(f"seed {seed}: {method}: {len(lg.scores)} epochs in {lg.trials} trials, best F1 {best:.4f}")
                logs[method].append(lg)
    return logs


def run_parallel(setup: Setup, jobs: int, smoke: bool) -> dict[str, list[EpochLog]]:
    """The seeds split over ``jobs`` processes (each a ``--logs-to`` run of this script);
    epochs, not seconds, are compared, so processes sharing the CPU do not bias the result."""
    import subprocess

    groups = [setup.seeds[i::jobs] for i in range(jobs) if setup.seeds[i::jobs]]
    with tempfile.TemporaryDirectory(prefix="flower-exp-bench-search-logs-") as tmp:
        procs = []
        for i, seeds in enumerate(groups):
            path = Path(tmp) / f"logs{i}.json"
            cmd = [sys.executable, __file__, "--seeds", ",".join(map(str, seeds)), "--budget", str(setup.budget),
                   "--trial-epochs", str(setup.epochs), "--logs-to", str(path), *(["--smoke"] if smoke else [])]
            procs.append((subprocess.Popen(cmd), path, seeds))
        failed = [p.args for p, _, _ in procs if p.wait() != 0]
        if failed:
            raise SystemExit(f"search.py: a seed process failed: {failed[0]}")
        by_seed = {}
        for _, path, seeds in procs:
            data = json.loads(path.read_text())
            for j, seed in enumerate(seeds):
                by_seed[seed] = {m: data[m][j] for m in METHODS}
    logs: dict[str, list[EpochLog]] = {m: [] for m in METHODS}
    for seed in setup.seeds:
        for m in METHODS:
            lg = EpochLog(setup.budget)
            lg.scores, lg.trials = by_seed[seed][m]["scores"], by_seed[seed][m]["trials"]
            logs[m].append(lg)
    return logs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run at the tiniest sizes (tests, CI)")
    parser.add_argument("--out", type=Path, help="folder for search.json and the plot (default: benchmarks/results; "
                                                 "with --smoke a new temporary folder)")
    parser.add_argument("--seeds", help=f"comma-separated sampler/tuner seeds (default {','.join(map(str, FULL.seeds))})")
    parser.add_argument("--budget", type=int, help=f"training epochs per method and seed (default {FULL.budget})")
    parser.add_argument("--trial-epochs", type=int, help=f"epochs of a full trial (default {FULL.epochs})")
    parser.add_argument("--jobs", type=int, default=1, help="processes to split the seeds over")
    parser.add_argument("--logs-to", type=Path, help=argparse.SUPPRESS)  # a --jobs child: epoch logs only
    args = parser.parse_args(argv)
    args.out = common.output_folder(args.out, args.smoke)
    setup = SMOKE if args.smoke else FULL
    if args.seeds:
        setup = dataclasses.replace(setup, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.budget:
        setup = dataclasses.replace(setup, budget=args.budget)
    if args.trial_epochs:
        setup = dataclasses.replace(setup, epochs=args.trial_epochs)
    if args.logs_to:
        logs = run_seeds(setup)
        args.logs_to.write_text(json.dumps({m: [{"scores": lg.scores, "trials": lg.trials} for lg in logs[m]]
                                            for m in METHODS}))
        return 0
    logs = run_parallel(setup, args.jobs, args.smoke) if args.jobs > 1 else run_seeds(setup)
    report(setup, logs, args.smoke, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
