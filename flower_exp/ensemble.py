"""Ensemble weights from stored validation probabilities, scored honestly.

Every trial stores ``val_probs.npz`` (``ids``, ``labels``, ``probs``). This module reads those
files, aligns the members by image id (members may have been trained at different image sizes,
so their validation files can list the ids in a different order), and decides how to blend
them. The story, top to bottom:

1. :func:`load_member` / :func:`align` — one probability stack ``[M, N, C]`` over shared ids.
2. :func:`stratified_halves` — validation split into two stratified halves A and B.
3. :func:`fit_weights` — weights searched on one half only: ``optuna`` (its own in-memory
   study, TPE, non-negative weights normalised to sum 1, equal and single-member points tried
   first), ``greedy`` (Caruana ensemble selection with replacement) or ``mean`` (equal).
4. :func:`evaluate` — fit on A, score on B; fit on B, score on A. The reported ensemble score
   is the mean of the two held-out scores and is compared with the best single member *chosen
   on the fit half* and scored on the held-out half. Final weights are then fit on all of
   validation. Nothing here is tuned to make the ensemble win: when it does not beat the best
   single member on held-out data, :attr:`EnsembleReport.ensemble_wins` is False.

The metric is macro-F1 over ``range(C)`` (sklearn's ``f1_score(average="macro",
labels=range(C), zero_division=0)``) of the argmax of the weighted average of probabilities,
computed here with ``bincount`` so hundreds of trials stay cheap.

Pure numpy; Optuna, scikit-learn and matplotlib are imported inside the functions that use
them, so ``import flower_exp.ensemble`` is cheap.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import FlowerExpError

METHODS = ("optuna", "greedy", "mean")
MIN_SHARED_FRACTION = 0.5
"""Members must share at least this fraction of the largest member's validation ids."""
ROW_SUM_TOLERANCE = 0.01
"""``probs`` rows must sum to 1 within this (softmax outputs; catches logits stored by mistake)."""


# --------------------------------------------------------------------------------------------
# Members: load, validate, align
# --------------------------------------------------------------------------------------------


@dataclass
class MemberProbs:
    """One candidate member's validation predictions."""

    name: str  # e.g. the MLflow run id
    ids: np.ndarray  # str [N]
    labels: np.ndarray  # int [N]
    probs: np.ndarray  # float [N, C]

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])


def load_member(name: str, npz_path: str) -> MemberProbs:
    """Read and validate one ``val_probs.npz``; a malformed file raises :class:`FlowerExpError`
    naming the file."""
    where = str(npz_path)
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            missing = [key for key in ("ids", "labels", "probs") if key not in data.files]
            if missing:
                raise FlowerExpError(
                    f"{where}: missing array(s) {', '.join(missing)} (found {', '.join(data.files) or 'none'}); "
                    "expected ids, labels, probs as written by flower-exp train"
                )
            ids, labels, probs = data["ids"], data["labels"], data["probs"]
    except FlowerExpError:
        raise
    except FileNotFoundError:
        raise FlowerExpError(f"{where}: validation probabilities file not found") from None
    except ValueError as exc:  # object arrays (pickled) or not an npz at all
        raise FlowerExpError(f"{where}: not a readable val_probs.npz ({_one_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FlowerExpError(f"{where}: cannot read val_probs.npz ({_one_line(exc)})") from None
    member = MemberProbs(name=name, ids=ids, labels=labels, probs=probs)
    return _validated(member, where)


def _validated(member: MemberProbs, where: str) -> MemberProbs:
    """Check shapes, dtypes and values; return a member with str ids, int64 labels, float32 probs."""
    ids, labels, probs = np.asarray(member.ids), np.asarray(member.labels), np.asarray(member.probs)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise FlowerExpError(f"{where}: probs must be a non-empty 2-D array [N, classes], got shape {probs.shape}")
    n = probs.shape[0]
    if ids.ndim != 1 or labels.ndim != 1 or len(ids) != n or len(labels) != n:
        raise FlowerExpError(
            f"{where}: ids {ids.shape}, labels {labels.shape} and probs {probs.shape} must describe the same "
            f"{n} validation images"
        )
    if ids.dtype.kind == "S":
        ids = np.char.decode(ids, "utf-8")
    elif ids.dtype.kind != "U":
        raise FlowerExpError(f"{where}: ids must be strings, got dtype {ids.dtype}")
    ids = ids.astype(str)
    if labels.dtype.kind not in "iu":
        raise FlowerExpError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if probs.dtype.kind != "f":
        raise FlowerExpError(f"{where}: probs must be floating point, got dtype {probs.dtype}")
    if len(np.unique(ids)) != n:
        values, counts = np.unique(ids, return_counts=True)
        raise FlowerExpError(f"{where}: id {values[counts > 1][0]!r} appears more than once; ids must be unique")
    classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= classes:
        raise FlowerExpError(
            f"{where}: labels must lie in 0..{classes - 1} (probs has {classes} classes), found {labels.min()}..{labels.max()}"
        )
    probs = probs.astype(np.float32, copy=False)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise FlowerExpError(f"{where}: probs must be finite and non-negative (softmax probabilities)")
    sums = probs.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad.size:
        raise FlowerExpError(
            f"{where}: probs rows must sum to 1 (softmax probabilities), row {bad[0]} sums to {sums[bad[0]]:.4g}"
        )
    return MemberProbs(name=member.name, ids=ids, labels=labels.astype(np.int64), probs=probs)


def align(members: list[MemberProbs]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align members by id: ``(ids [N'], labels [N'], stack [M, N', C])`` over the ids common to
    all members, in the first member's order."""
    if not members:
        raise FlowerExpError("no ensemble members given")
    members = [_validated(m, f"member {m.name!r}") for m in members]
    first = members[0]
    for other in members[1:]:
        if other.num_classes != first.num_classes:
            raise FlowerExpError(
                f"member {other.name!r} predicts {other.num_classes} classes but {first.name!r} predicts "
                f"{first.num_classes}; ensemble members must come from the same experiment"
            )
    shared = np.ones(len(first.ids), dtype=bool)
    for other in members[1:]:
        shared &= np.isin(first.ids, other.ids)
    ids = first.ids[shared]
    largest = max(members, key=lambda m: len(m.ids))
    if len(ids) == 0 or len(ids) < MIN_SHARED_FRACTION * len(largest.ids):
        raise FlowerExpError(
            f"only {len(ids)} validation ids are shared by all {len(members)} members "
            f"({largest.name!r} has {len(largest.ids)}, {first.name!r} has {len(first.ids)}); "
            "were they evaluated on the same validation split?"
        )
    labels = first.labels[shared]
    stack = np.empty((len(members), len(ids), first.num_classes), dtype=np.float32)
    for m, member in enumerate(members):
        order = np.argsort(member.ids, kind="stable")
        rows = order[np.searchsorted(member.ids, ids, sorter=order)]
        conflict = np.flatnonzero(member.labels[rows] != labels)
        if conflict.size:
            i = conflict[0]
            raise FlowerExpError(
                f"id {ids[i]!r} has label {labels[i]} in {first.name!r} but {member.labels[rows][i]} in "
                f"{member.name!r} ({conflict.size} ids disagree); members must share the same validation labels"
            )
        stack[m] = member.probs[rows]
    return ids, labels, stack


# --------------------------------------------------------------------------------------------
# Metric and blending
# --------------------------------------------------------------------------------------------


def macro_f1(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Macro-F1 over ``range(num_classes)`` of ``argmax(probs)``; classes absent from both the
    labels and the predictions count as 0 (sklearn's ``zero_division=0``)."""
    labels = np.asarray(labels)
    predicted = np.asarray(probs).argmax(axis=1)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FlowerExpError(f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return _macro_f1_from_predictions(predicted, labels, num_classes)


def _macro_f1_from_predictions(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    # F1_c = 2·TP / (2·TP + FP + FN) = 2·TP / (#true_c + #predicted_c); 0 when both are 0.
    true_positive = np.bincount(labels[predicted == labels], minlength=num_classes)
    denominator = np.bincount(labels, minlength=num_classes) + np.bincount(predicted, minlength=num_classes)
    f1 = np.divide(2.0 * true_positive, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1[:num_classes].mean())


def combine(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted average of member probabilities: ``stack [M, N, C]``, ``weights [M]`` → ``[N, C]``."""
    stack = np.asarray(stack)
    weights = np.asarray(weights, dtype=np.float64)
    if stack.ndim != 3 or weights.shape != (stack.shape[0],):
        raise FlowerExpError(
            f"{weights.shape[0] if weights.ndim == 1 else weights.shape} weights "
            f"for a stack of shape {stack.shape}; need one weight per member"
        )
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise FlowerExpError(f"ensemble weights must be finite, non-negative and not all zero, got {weights.tolist()}")
    weights = (weights / weights.sum()).astype(stack.dtype if stack.dtype.kind == "f" else np.float64)
    return np.tensordot(weights, stack, axes=1)


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into two disjoint, covering, sorted halves, each class split as
    evenly as possible; a class's odd example goes to alternating halves (class by class, in
    label order) so the halves stay the same size. Deterministic by ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    odd_to_first = True
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = len(members) // 2
        if len(members) % 2:
            cut += odd_to_first
            odd_to_first = not odd_to_first
        first.append(members[:cut])
        second.append(members[cut:])
    empty = np.empty(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(first or [empty])).astype(np.int64),
        np.sort(np.concatenate(second or [empty])).astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# Weight search on one set of indices
# --------------------------------------------------------------------------------------------


class _Scorer:
    """Macro-F1 of a weighting on fixed indices, with the members' rows gathered once."""

    def __init__(self, stack: np.ndarray, labels: np.ndarray, idx: np.ndarray, num_classes: int):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise FlowerExpError("cannot fit ensemble weights on an empty set of validation images")
        self.stack = np.ascontiguousarray(np.asarray(stack)[:, idx], dtype=np.float32)
        self.labels = np.asarray(labels)[idx].astype(np.int64)
        if self.labels.min() < 0 or self.labels.max() >= num_classes:
            raise FlowerExpError(f"labels must lie in 0..{num_classes - 1}")
        self.num_classes = num_classes
        self._flat = self.stack.reshape(self.stack.shape[0], -1)

    @property
    def members(self) -> int:
        return self.stack.shape[0]

    def blend(self, weights: np.ndarray) -> np.ndarray:
        """Sum of weighted probabilities (unnormalised; argmax is unchanged by a positive scale)."""
        return (weights.astype(np.float32) @ self._flat).reshape(self.stack.shape[1:])

    def score(self, weights: np.ndarray) -> float:
        return self.score_probs(self.blend(weights))

    def score_probs(self, probs: np.ndarray) -> float:
        return _macro_f1_from_predictions(probs.argmax(axis=1), self.labels, self.num_classes)


def _normalised(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    total = raw.sum()
    if total <= 0:
        return np.full(len(raw), 1.0 / len(raw))
    return raw / total


def fit_weights(
    stack: np.ndarray,
    labels: np.ndarray,
    idx: np.ndarray,
    *,
    method: str,
    trials: int,
    seed: int,
    num_classes: int,
    study_name: str = "ensemble",
) -> tuple[np.ndarray, list[dict]]:
    """Fit member weights (non-negative, summing to 1) on the rows ``idx`` only.

    ``optuna``: a fresh in-memory study (``study_name``, ``TPESampler(seed=seed)``) suggests one
    float in [0, 1] per member, normalised (all zero → equal). The equal-weights point and each
    single-member point are enqueued first (they count toward ``trials``), so the result is at
    least as good as all of them on ``idx`` when ``trials >= members + 1``; ties go to the
    earliest trial. ``greedy``: Caruana selection with replacement — start from the best single
    member, then repeatedly add the member that most improves macro-F1 (strictly), at most
    ``trials`` selections in all; weights = selection counts / total. ``mean``: equal weights.

    Returns ``(weights, records)``; records are ``{number, weights, value}`` per trial/round
    (greedy also ``added``), empty for ``mean`` and for a single member.
    """
    if method not in METHODS:
        raise FlowerExpError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise FlowerExpError(f"need a member stack of shape [members, images, classes], got {stack.shape}")
    members = stack.shape[0]
    if method != "mean" and trials < 1:
        raise FlowerExpError(f"--trials must be at least 1 for the {method} ensemble method, got {trials}")
    if members == 1:
        return np.ones(1), []
    if method == "mean":
        return np.full(members, 1.0 / members), []
    scorer = _Scorer(stack, labels, idx, num_classes)
    if method == "greedy":
        return _fit_greedy(scorer, trials)
    return _fit_optuna(scorer, trials, seed, study_name)


def _fit_optuna(scorer: _Scorer, trials: int, seed: int, study_name: str) -> tuple[np.ndarray, list[dict]]:
    import optuna

    members = scorer.members
    names = [f"w{i}" for i in range(members)]

    def objective(trial) -> float:
        raw = np.array([trial.suggest_float(name, 0.0, 1.0) for name in names])
        weights = _normalised(raw)
        trial.set_user_attr("weights", weights.tolist())
        return scorer.score(weights)

    with _quiet_optuna():
        study = optuna.create_study(study_name=study_name, direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.enqueue_trial({name: 1.0 for name in names})
        for i in range(members):
            study.enqueue_trial({name: float(j == i) for j, name in enumerate(names)})
        study.optimize(objective, n_trials=trials)
    records = [
        {"number": t.number, "weights": t.user_attrs["weights"], "value": float(t.value)}
        for t in study.trials
        if t.value is not None
    ]
    best = max(records, key=lambda r: (r["value"], -r["number"]))  # ties: earliest trial
    return np.asarray(best["weights"]), records


def _fit_greedy(scorer: _Scorer, rounds: int) -> tuple[np.ndarray, list[dict]]:
    members = scorer.members
    singles = [scorer.score(np.eye(members)[m]) for m in range(members)]
    chosen = int(np.argmax(singles))  # ties: first member
    counts = np.zeros(members, dtype=np.int64)
    counts[chosen] = 1
    total = scorer.stack[chosen].astype(np.float32)
    current = singles[chosen]
    records = [{"number": 0, "weights": (counts / counts.sum()).tolist(), "value": current, "added": chosen}]
    for number in range(1, rounds):
        candidates = [scorer.score_probs(total + scorer.stack[m]) for m in range(members)]
        best = int(np.argmax(candidates))  # ties: first member
        if candidates[best] <= current:
            break
        counts[best] += 1
        total = total + scorer.stack[best]
        current = candidates[best]
        records.append({"number": number, "weights": (counts / counts.sum()).tolist(), "value": current, "added": best})
    return counts / counts.sum(), records


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines off for the block, the previous verbosity restored after."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# --------------------------------------------------------------------------------------------
# The held-out protocol
# --------------------------------------------------------------------------------------------


@dataclass
class EnsembleReport:
    method: str
    member_names: list[str]
    weights: list[float]  # final weights, fit on ALL of validation with the same method
    holdout_ensemble: float  # mean of the two held-out ensemble scores
    holdout_best_single: float  # mean over halves: member best on the fit half, scored held-out
    holdout_members: dict[str, float]  # each member's mean held-out score over both halves
    halves: list[dict]  # per swap: fit_size, holdout_size, weights, ensemble_score, best_single_*
    ensemble_wins: bool  # holdout_ensemble > holdout_best_single (strictly; ties -> False)
    best_single: str  # member with the best macro-F1 on all of validation
    search_trials: list[dict]  # every weight-search record, tagged with "phase"
    num_classes: int
    val_size: int
    val_members: dict[str, float] = field(default_factory=dict)  # each member on all of validation


def evaluate(
    members: list[MemberProbs],
    *,
    method: str = "optuna",
    trials: int = 100,
    seed: int = 0,
    num_classes: int | None = None,
    study_name: str = "ensemble",
) -> EnsembleReport:
    """Fit weights on one stratified half of validation and score on the other, both ways.

    Swap 1 fits on ``stratified_halves(labels, seed)[0]`` (phase ``half_a``) and scores on
    ``[1]``; swap 2 the reverse (phase ``half_b``). Final weights are fit on all of validation
    (phase ``final``). Studies are named ``<study_name>-half_a``, ``-half_b``, ``-final``.
    """
    if method not in METHODS:
        raise FlowerExpError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    if not members:
        raise FlowerExpError("no ensemble members given")
    names = [m.name for m in members]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FlowerExpError(f"ensemble member(s) {', '.join(map(repr, duplicates))} given more than once")
    ids, labels, stack = align(members)
    classes = stack.shape[2]
    if num_classes is not None and num_classes != classes:
        raise FlowerExpError(f"the experiment has {num_classes} classes but the members' probabilities have {classes}")
    count = len(members)
    one_hot = np.eye(count)

    def member_scores(idx: np.ndarray) -> list[float]:
        scorer = _Scorer(stack, labels, idx, classes)
        return [scorer.score(one_hot[m]) for m in range(count)]

    half_a, half_b = stratified_halves(labels, seed)
    if len(half_a) == 0 or len(half_b) == 0:
        raise FlowerExpError(f"need at least 2 validation images to fit and score an ensemble, got {len(ids)}")
    halves: list[dict] = []
    search: list[dict] = []
    held_out: dict[str, list[float]] = {name: [] for name in names}
    for phase, offset, fit, hold in (("half_a", 0, half_a, half_b), ("half_b", 1, half_b, half_a)):
        weights, records = fit_weights(
            stack,
            labels,
            fit,
            method=method,
            trials=trials,
            seed=seed + offset,
            num_classes=classes,
            study_name=f"{study_name}-{phase}",
        )
        search += [{"phase": phase, **record} for record in records]
        on_fit, on_hold = member_scores(fit), member_scores(hold)
        for name, score in zip(names, on_hold):
            held_out[name].append(score)
        best = int(np.argmax(on_fit))  # chosen on the fit half, like the weights
        halves.append(
            {
                "phase": phase,
                "fit_size": int(len(fit)),
                "holdout_size": int(len(hold)),
                "weights": [float(w) for w in weights],
                "ensemble_score": macro_f1(combine(stack[:, hold], weights), labels[hold], classes),
                "best_single_name": names[best],
                "best_single_score": on_hold[best],
            }
        )
    everything = np.arange(len(ids))
    weights, records = fit_weights(
        stack,
        labels,
        everything,
        method=method,
        trials=trials,
        seed=seed + 2,
        num_classes=classes,
        study_name=f"{study_name}-final",
    )
    search += [{"phase": "final", **record} for record in records]
    on_all = member_scores(everything)
    holdout_ensemble = float(np.mean([h["ensemble_score"] for h in halves]))
    holdout_best_single = float(np.mean([h["best_single_score"] for h in halves]))
    return EnsembleReport(
        method=method,
        member_names=names,
        weights=[float(w) for w in weights],
        holdout_ensemble=holdout_ensemble,
        holdout_best_single=holdout_best_single,
        holdout_members={name: float(np.mean(scores)) for name, scores in held_out.items()},
        halves=halves,
        ensemble_wins=count > 1 and holdout_ensemble > holdout_best_single,
        best_single=names[int(np.argmax(on_all))],
        search_trials=search,
        num_classes=classes,
        val_size=int(len(ids)),
        val_members=dict(zip(names, on_all)),
    )


# --------------------------------------------------------------------------------------------
# Confusion matrix plot
# --------------------------------------------------------------------------------------------


def confusion_png(probs: np.ndarray, labels: np.ndarray, class_names: list[str], path: str, title: str) -> None:
    """Confusion matrix of ``argmax(probs)`` as a PNG, rows normalised to the true class
    (square-root colour scale).

    Drawn on a private Agg canvas (no pyplot state touched); cell counts are printed only up to
    20 classes, tick labels shrink with the class count. Written to a temporary file in the
    target folder and renamed into place.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    probs, labels = np.asarray(probs), np.asarray(labels).astype(np.int64)
    n = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != n or len(labels) != probs.shape[0]:
        raise FlowerExpError(
            f"confusion matrix: {n} class names for probabilities of shape {probs.shape} and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        raise FlowerExpError(f"confusion matrix: labels must lie in 0..{n - 1}")
    predicted = probs.argmax(axis=1)
    matrix = np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
    per_row = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, per_row, out=np.zeros(matrix.shape), where=per_row > 0)

    side = min(30.0, 4.0 + 0.22 * n)
    tick_size = 9 if n <= 20 else max(5.0, 9 - n / 25)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # square-root colour scale: a few confusions (a small fraction of a class) stay visible
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(n), class_names, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10 if n <= 20 else 12)
    if n <= 20:
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(
                j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, shrink=0.6, label="fraction of the true class")
    fig.tight_layout()

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(handle)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
