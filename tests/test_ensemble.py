"""Ensemble weights: alignment, metric, stratified halves, weight search and the held-out protocol.

Hand-built probability arrays only (no TensorFlow, no MLflow); the whole file runs in seconds.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from flower_exp.ensemble import (
    EnsembleReport,
    MemberProbs,
    align,
    combine,
    confusion_png,
    evaluate,
    fit_weights,
    load_member,
    macro_f1,
    stratified_halves,
)
from flower_exp.errors import FlowerExpError

C = 10


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def balanced_labels(per_class: int = 40, classes: int = C) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def make_ids(n: int) -> np.ndarray:
    return np.array([f"img{i:05d}" for i in range(n)])


def confident(predicted: np.ndarray, classes: int = C, top: float = 0.91) -> np.ndarray:
    """Rows with ``top`` on the predicted class, the rest spread evenly."""
    probs = np.full((len(predicted), classes), (1 - top) / (classes - 1), dtype=np.float32)
    probs[np.arange(len(predicted)), predicted] = top
    return probs


def wrong_class(labels: np.ndarray, rng: np.random.Generator, classes: int = C) -> np.ndarray:
    return (labels + rng.integers(1, classes, len(labels))) % classes


def complementary_pair(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A is right (0.7) on classes 0-4 and wrong on 5-9 (0.4 on a wrong class, 0.3 on the true one);
    B the mirror image. Each alone gets about half right; the 50/50 blend gets everything right."""
    rng = np.random.default_rng(seed)

    def member(good: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(labels), C), dtype=np.float32)
        rows = np.arange(len(labels))
        wrong = wrong_class(labels, rng)
        for i in rows:
            if good[i]:
                probs[i] = 0.3 / (C - 1)
                probs[i, labels[i]] = 0.7
            else:
                probs[i] = 0.3 / (C - 2)
                probs[i, labels[i]] = 0.3
                probs[i, wrong[i]] = 0.4
        return probs

    return member(labels < 5), member(labels >= 5)


def dominant(labels: np.ndarray, accuracy: float, seed: int, top: float = 0.91) -> np.ndarray:
    rng = np.random.default_rng(seed)
    predicted = np.where(rng.random(len(labels)) < accuracy, labels, wrong_class(labels, rng))
    return confident(predicted, top=top)


def noise(n: int, seed: int, classes: int = C) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(classes), size=n).astype(np.float32)


def sk_macro_f1(probs, labels, classes):
    from sklearn.metrics import f1_score

    return f1_score(labels, np.asarray(probs).argmax(1), average="macro", labels=range(classes), zero_division=0)


# --------------------------------------------------------------------------------------------
# macro_f1 / combine
# --------------------------------------------------------------------------------------------


def test_macro_f1_hand_computed_counts_absent_classes_as_zero():
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.eye(4)[[0, 1, 1, 1, 0]]
    # class 0: 2·1/(2+2) = 0.5; class 1: 2·2/(2+3) = 0.8; class 2: 0; class 3 (absent): 0
    assert macro_f1(probs, labels, 4) == pytest.approx((0.5 + 0.8) / 4)
    assert macro_f1(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]), 3) == 1.0


def test_macro_f1_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(7)
    for _ in range(50):
        classes, n = int(rng.integers(2, 12)), int(rng.integers(1, 60))
        labels, probs = rng.integers(0, classes, n), rng.random((n, classes))
        assert macro_f1(probs, labels, classes) == pytest.approx(sk_macro_f1(probs, labels, classes), abs=1e-12)


def test_combine_is_the_normalised_weighted_average():
    stack = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    np.testing.assert_allclose(combine(stack, np.array([3.0, 1.0])), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(combine(stack, np.array([0.75, 0.25])), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(combine(stack, np.array([0.0, 1.0])), stack[1])
    with pytest.raises(FlowerExpError):
        combine(stack, np.array([1.0, -0.5]))
    with pytest.raises(FlowerExpError):
        combine(stack, np.array([1.0]))


# --------------------------------------------------------------------------------------------
# load_member
# --------------------------------------------------------------------------------------------


def test_load_member_round_trip_decodes_byte_ids(tmp_path):
    path = tmp_path / "val_probs.npz"
    np.savez_compressed(path, ids=np.array([b"a", b"b", b"c"]), labels=np.array([0, 2, 1]), probs=np.eye(3)[[0, 2, 1]])
    member = load_member("run1", str(path))
    assert member.name == "run1"
    assert member.ids.tolist() == ["a", "b", "c"]
    assert member.labels.dtype == np.int64 and member.probs.dtype == np.float32
    np.testing.assert_array_equal(member.probs.argmax(1), [0, 2, 1])


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"ids": np.array(["a", "b"]), "labels": np.array([0, 1])}, "missing array(s) probs"),
        ({"ids": np.array(["a", "b"]), "labels": np.array([0, 1]), "probs": np.ones(2)}, "2-D"),
        ({"ids": np.array(["a", "b", "c"]), "labels": np.array([0, 1]), "probs": np.eye(2)}, "same"),
        ({"ids": np.array(["a", "b"]), "labels": np.array([0, 5]), "probs": np.eye(2)}, "labels must lie"),
        ({"ids": np.array(["a", "a"]), "labels": np.array([0, 1]), "probs": np.eye(2)}, "more than once"),
        ({"ids": np.array(["a", "b"]), "labels": np.array([0, 1]), "probs": np.eye(2) * 3 - 1}, "non-negative"),
        ({"ids": np.array(["a", "b"]), "labels": np.array([0, 1]), "probs": np.eye(2) * 2}, "sum to 1"),
        ({"ids": np.array(["a", "b"]), "labels": np.array([0.0, 1.0]), "probs": np.eye(2)}, "integers"),
        ({"ids": np.array(["a", "b"], dtype=object), "labels": np.array([0, 1]), "probs": np.eye(2)}, "not a readable"),
    ],
)
def test_load_member_malformed_npz_names_the_file(tmp_path, arrays, fragment):
    path = tmp_path / "broken_val_probs.npz"
    np.savez(path, **arrays)
    with pytest.raises(FlowerExpError) as caught:
        load_member("run1", str(path))
    message = str(caught.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_load_member_not_an_npz_or_missing(tmp_path):
    text = tmp_path / "val_probs.npz"
    text.write_text("not a zip file")
    with pytest.raises(FlowerExpError, match="val_probs.npz"):
        load_member("run1", str(text))
    with pytest.raises(FlowerExpError, match="nowhere.npz"):
        load_member("run1", str(tmp_path / "nowhere.npz"))


# --------------------------------------------------------------------------------------------
# align
# --------------------------------------------------------------------------------------------


def test_align_reorders_by_id_and_drops_ids_not_shared():
    rng = np.random.default_rng(0)
    labels = balanced_labels(10)
    ids = make_ids(len(labels))
    first = dominant(labels, 0.8, seed=1)
    second = dominant(labels, 0.6, seed=2)  # "another image size": same ids, other quality
    extra_ids = np.array([f"extra{i}" for i in range(20)])
    perm = rng.permutation(len(labels) + 20)
    ids2 = np.concatenate([ids, extra_ids])[perm]
    labels2 = np.concatenate([labels, np.zeros(20, dtype=int)])[perm]
    probs2 = np.concatenate([second, noise(20, seed=3)])[perm]

    got_ids, got_labels, stack = align([MemberProbs("a", ids, labels, first), MemberProbs("b", ids2, labels2, probs2)])
    np.testing.assert_array_equal(got_ids, ids)  # first member's order, extras gone
    np.testing.assert_array_equal(got_labels, labels)
    assert stack.shape == (2, len(labels), C)
    np.testing.assert_array_equal(stack[0], first)
    np.testing.assert_array_equal(stack[1], second)  # row i of b is the row for ids[i]


def test_align_first_member_order_with_ids_missing_from_it():
    ids = np.array(["x", "y", "z", "w"])
    labels = np.array([0, 1, 2, 0])
    a = MemberProbs("a", ids, labels, np.eye(3)[labels])
    b = MemberProbs("b", ids[[3, 1, 0]], labels[[3, 1, 0]], np.eye(3)[[1, 2, 0]])
    got_ids, got_labels, stack = align([a, b])
    assert got_ids.tolist() == ["x", "y", "w"]
    assert got_labels.tolist() == [0, 1, 0]
    assert stack[1].argmax(1).tolist() == [0, 2, 1]


def test_align_rejects_conflicting_labels_other_class_counts_and_few_shared_ids():
    labels = balanced_labels(4)
    ids = make_ids(len(labels))
    good = MemberProbs("a", ids, labels, confident(labels))
    flipped = labels.copy()
    flipped[3] = (flipped[3] + 1) % C
    with pytest.raises(FlowerExpError, match=r"img00003.*'a'.*'b'"):
        align([good, MemberProbs("b", ids, flipped, confident(labels))])
    with pytest.raises(FlowerExpError, match="predicts 5 classes"):
        align([good, MemberProbs("b", ids, labels % 5, confident(labels % 5, classes=5))])
    keep = slice(0, 15)  # 15 of 40 ids shared
    with pytest.raises(FlowerExpError, match="only 15 validation ids"):
        align([good, MemberProbs("b", ids[keep], labels[keep], confident(labels[keep]))])
    with pytest.raises(FlowerExpError):
        align([])


# --------------------------------------------------------------------------------------------
# stratified_halves
# --------------------------------------------------------------------------------------------


def test_stratified_halves_disjoint_covering_balanced_and_seeded():
    counts = [1, 1, 1, 2, 3, 5, 10, 7]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    a, b = stratified_halves(labels, seed=4)
    assert len(np.intersect1d(a, b)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(len(labels)))
    assert abs(len(a) - len(b)) <= 1
    for label, count in enumerate(counts):
        in_a, in_b = (labels[a] == label).sum(), (labels[b] == label).sum()
        assert abs(in_a - in_b) <= 1
        if count >= 2:
            assert in_a >= 1 and in_b >= 1
    # the three singleton classes alternate between the halves
    assert [(labels[a] == label).sum() for label in range(3)] == [1, 0, 1]
    again = stratified_halves(labels, seed=4)
    np.testing.assert_array_equal(a, again[0])
    np.testing.assert_array_equal(b, again[1])
    other = stratified_halves(labels, seed=5)
    assert not np.array_equal(a, other[0])


# --------------------------------------------------------------------------------------------
# fit_weights
# --------------------------------------------------------------------------------------------


def test_fit_weights_optuna_finds_the_complementary_blend():
    labels = balanced_labels()
    stack = np.stack(complementary_pair(labels))
    idx = np.arange(len(labels))
    singles = [macro_f1(stack[m], labels, C) for m in range(2)]
    assert max(singles) < 0.7
    weights, records = fit_weights(stack, labels, idx, method="optuna", trials=25, seed=0, num_classes=C)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert macro_f1(combine(stack, weights), labels, C) == 1.0
    assert 0.3 < weights[0] < 0.7
    assert len(records) == 25 and [r["number"] for r in records] == list(range(25))
    # equal weights and each single member are tried first; the result is at least as good
    assert records[0]["weights"] == [0.5, 0.5]
    assert records[1]["weights"] == [1.0, 0.0] and records[2]["weights"] == [0.0, 1.0]
    assert records[1]["value"] == pytest.approx(singles[0])
    assert max(r["value"] for r in records) == macro_f1(combine(stack, weights), labels, C)


def test_fit_weights_optuna_pushes_a_harmful_noise_member_down():
    labels = balanced_labels()
    # a hesitant good member (0.3 on its pick) and a noise member: noise at equal weight flips many
    good = dominant(labels, 0.8, seed=1, top=0.3)
    stack = np.stack([good, noise(len(labels), seed=2)])
    idx = np.arange(len(labels))
    weights, records = fit_weights(stack, labels, idx, method="optuna", trials=40, seed=0, num_classes=C)
    assert records[0]["value"] < macro_f1(good, labels, C) - 0.05  # equal weights really hurt
    assert weights[1] < 0.2
    assert macro_f1(combine(stack, weights), labels, C) >= macro_f1(good, labels, C)


def test_fit_weights_only_looks_at_idx():
    labels = balanced_labels()
    a, b = complementary_pair(labels)
    stack = np.stack([a, b])
    only_a_classes = np.flatnonzero(labels < 5)  # where member a is right and b is wrong
    weights, _ = fit_weights(stack, labels, only_a_classes, method="greedy", trials=10, seed=0, num_classes=C)
    np.testing.assert_array_equal(weights, [1.0, 0.0])


def test_fit_weights_greedy_and_mean():
    labels = balanced_labels()
    stack = np.stack(complementary_pair(labels))
    idx = np.arange(len(labels))
    weights, records = fit_weights(stack, labels, idx, method="greedy", trials=50, seed=0, num_classes=C)
    np.testing.assert_allclose(weights, [0.5, 0.5])
    assert [r["added"] for r in records] == [0, 1]  # a first (ties: first member), then b; then no gain
    assert records[-1]["value"] == 1.0

    three = np.stack([dominant(labels, 0.9, seed=1), noise(len(labels), 2), noise(len(labels), 3)])
    weights, records = fit_weights(three, labels, idx, method="greedy", trials=50, seed=0, num_classes=C)
    np.testing.assert_array_equal(weights, [1.0, 0.0, 0.0])
    assert len(records) == 1

    weights, records = fit_weights(three, labels, idx, method="mean", trials=0, seed=0, num_classes=C)
    np.testing.assert_allclose(weights, [1 / 3] * 3)
    assert records == []


def test_fit_weights_unknown_method_lists_the_known_ones():
    labels = balanced_labels(2)
    stack = np.stack([confident(labels)] * 2)
    with pytest.raises(FlowerExpError, match="optuna, greedy, mean"):
        fit_weights(stack, labels, np.arange(len(labels)), method="stacking", trials=5, seed=0, num_classes=C)


# --------------------------------------------------------------------------------------------
# evaluate: the held-out protocol
# --------------------------------------------------------------------------------------------


def test_evaluate_scores_on_held_out_data_only():
    """A member that memorised half A (perfect there, random on B) looks perfect when fit on A;
    its score and the ensemble's must come from B, where it is no better than chance."""
    labels = balanced_labels()
    ids = make_ids(len(labels))
    seed = 3
    half_a, half_b = stratified_halves(labels, seed)
    rng = np.random.default_rng(0)
    memo_pick = rng.integers(0, C, len(labels))
    memo_pick[half_a] = labels[half_a]
    memo = confident(memo_pick)
    honest = dominant(labels, 0.7, seed=5, top=0.5)
    assert macro_f1(memo[half_a], labels[half_a], C) == 1.0

    report = evaluate(
        [MemberProbs("memo", ids, labels, memo), MemberProbs("honest", ids, labels, honest)],
        method="optuna",
        trials=30,
        seed=seed,
    )
    first, second = report.halves
    assert (first["fit_size"], first["holdout_size"]) == (len(half_a), len(half_b))
    assert first["best_single_name"] == "memo"  # chosen on the fit half...
    assert first["best_single_score"] == macro_f1(memo[half_b], labels[half_b], C)  # ...scored on B
    assert first["best_single_score"] < 0.3
    assert first["ensemble_score"] < 0.5
    assert first["ensemble_score"] == macro_f1(combine(np.stack([memo, honest])[:, half_b], first["weights"]), labels[half_b], C)
    assert second["best_single_name"] == "honest"
    assert report.holdout_best_single == pytest.approx((first["best_single_score"] + second["best_single_score"]) / 2)
    assert report.holdout_members["memo"] == pytest.approx((macro_f1(memo[half_b], labels[half_b], C) + 1.0) / 2)
    assert report.holdout_ensemble == pytest.approx((first["ensemble_score"] + second["ensemble_score"]) / 2)
    assert {r["phase"] for r in report.search_trials} == {"half_a", "half_b", "final"}
    assert len(report.search_trials) == 90


@pytest.mark.parametrize("method", ["optuna", "greedy"])
def test_evaluate_falls_back_to_the_single_member_when_the_others_are_noise(method):
    labels = balanced_labels()
    ids = make_ids(len(labels))
    rng = np.random.default_rng(1)
    members = [MemberProbs("good", ids, labels, dominant(labels, 0.75, seed=1))]
    for k in range(2):
        perm = rng.permutation(len(labels))
        members.append(MemberProbs(f"noise{k}", ids[perm], labels[perm], noise(len(labels), seed=10 + k)))
    report = evaluate(members, method=method, trials=40, seed=0)
    assert report.ensemble_wins is False
    assert report.best_single == "good"
    assert report.holdout_ensemble <= report.holdout_best_single
    assert all(h["best_single_name"] == "good" for h in report.halves)
    assert report.holdout_members["good"] > 0.6 > max(report.holdout_members["noise0"], report.holdout_members["noise1"])
    if method == "greedy":  # greedy never adds a member that does not strictly help
        assert report.weights == [1.0, 0.0, 0.0]
    else:  # optuna may keep harmless noise weight (ties go to the earliest trial: equal weights)
        assert report.weights[0] >= max(report.weights[1:])


@pytest.mark.parametrize("method", ["optuna", "greedy", "mean"])
def test_evaluate_complementary_members_win(method):
    labels = balanced_labels()
    ids = make_ids(len(labels))
    a, b = complementary_pair(labels)
    perm = np.random.default_rng(2).permutation(len(labels))
    report = evaluate(
        [MemberProbs("a", ids, labels, a), MemberProbs("b", ids[perm], labels[perm], b[perm])],
        method=method,
        trials=25,
        seed=1,
        num_classes=C,
    )
    assert isinstance(report, EnsembleReport)
    assert report.ensemble_wins is True
    assert report.holdout_ensemble == 1.0
    assert report.holdout_best_single < 0.7
    assert sum(report.weights) == pytest.approx(1.0) and min(report.weights) > 0.25
    assert report.val_size == len(labels) and report.num_classes == C
    assert report.member_names == ["a", "b"]
    assert [h["fit_size"] + h["holdout_size"] for h in report.halves] == [len(labels)] * 2


def test_evaluate_one_member():
    labels = balanced_labels()
    probs = dominant(labels, 0.8, seed=4)
    report = evaluate([MemberProbs("solo", make_ids(len(labels)), labels, probs)], trials=20, seed=0)
    assert report.weights == [1.0]
    assert report.ensemble_wins is False
    assert report.best_single == "solo"
    assert report.search_trials == []
    half_a, half_b = stratified_halves(labels, 0)
    expected = (macro_f1(probs[half_b], labels[half_b], C) + macro_f1(probs[half_a], labels[half_a], C)) / 2
    assert report.holdout_ensemble == pytest.approx(expected)
    assert report.holdout_best_single == pytest.approx(expected)
    assert report.holdout_members == {"solo": pytest.approx(expected)}


def test_evaluate_is_deterministic_for_a_seed():
    labels = balanced_labels()
    ids = make_ids(len(labels))
    members = [MemberProbs(f"m{k}", ids, labels, dominant(labels, 0.6, seed=k, top=0.4 + 0.1 * k)) for k in range(3)]
    first = evaluate(members, trials=20, seed=11)
    second = evaluate(members, trials=20, seed=11)
    assert first == second
    other = evaluate(members, trials=20, seed=12)
    assert other.search_trials != first.search_trials


def test_evaluate_user_errors():
    labels = balanced_labels(2)
    member = MemberProbs("m", make_ids(len(labels)), labels, confident(labels))
    with pytest.raises(FlowerExpError, match="more than once"):
        evaluate([member, member])
    with pytest.raises(FlowerExpError, match="104 classes"):
        evaluate([member], num_classes=104)
    with pytest.raises(FlowerExpError, match="optuna, greedy, mean"):
        evaluate([member], method="best")
    with pytest.raises(FlowerExpError):
        evaluate([])


def test_evaluate_restores_optuna_logging():
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        labels = balanced_labels(4)
        ids = make_ids(len(labels))
        evaluate(
            [MemberProbs("a", ids, labels, confident(labels)), MemberProbs("b", ids, labels, noise(len(labels), 1))], trials=5
        )
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


# --------------------------------------------------------------------------------------------
# confusion_png
# --------------------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("classes", [3, 104])
def test_confusion_png_writes_a_png(tmp_path, classes):
    labels = np.arange(classes).repeat(3)
    probs = confident(labels, classes=classes, top=0.9)
    names = [f"flower {i}" for i in range(classes)]
    figures_before = _pyplot_figures()
    path = tmp_path / "plots" / "confusion.png"
    confusion_png(probs, labels, names, str(path), title="ensemble (held-out)")
    width, height = png_size(path)
    assert width > 300 and height > 300
    if classes == 104:
        assert width > 1500  # room for 104 tick labels
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]  # no temporary left behind
    assert _pyplot_figures() == figures_before
    with pytest.raises(FlowerExpError):
        confusion_png(probs, labels, names[:-1], str(path), title="x")


def _pyplot_figures() -> list[int]:
    plt = sys.modules.get("matplotlib.pyplot")
    return plt.get_fignums() if plt else []
