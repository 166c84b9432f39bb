"""Uncertainty metrics against hand-computed cases and brute-force references."""

import itertools
import math

import numpy as np
import pytest

from lrvd import uncertainty as unc

LN2 = math.log(2)


def h2(p: float) -> float:
    """Binary entropy in nats, written out independently of the module."""
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


# --- entropy decomposition ---------------------------------------------------------------------------------------


def test_predictive_entropy_hand_computed():
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    # H = ln 2 ; 0 (0·log 0 = 0) ; −(0.9 ln 0.9 + 0.1 ln 0.1) = 0.0948245 + 0.2302585 = 0.3250830
    np.testing.assert_allclose(unc.predictive_entropy(probs), [LN2, 0.0, 0.3250830], atol=1e-7)
    four = np.full((1, 4), 0.25)  # uniform over 4 classes: ln 4
    np.testing.assert_allclose(unc.predictive_entropy(four), [math.log(4)])


def test_mutual_information_of_two_confident_samples_that_disagree():
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [S=2, N=1, C=2]
    # mean [0.5, 0.5]: H = ln 2 ; each sample is certain: E = 0 ; MI = ln 2 − 0
    np.testing.assert_allclose(unc.expected_entropy(samples), [0.0], atol=1e-12)
    np.testing.assert_allclose(unc.mutual_information(samples), [LN2])


def test_entropy_decomposition_hand_computed():
    samples = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    # mean [0.6, 0.4]: H = 0.6·0.5108256 + 0.4·0.9162907 = 0.6730117
    # H[p1] = 0.8·0.2231436 + 0.2·1.6094379 = 0.5004024 ; H[p2] = H[0.6, 0.4] = 0.6730117
    # E = (0.5004024 + 0.6730117)/2 = 0.5867071 ; MI = 0.6730117 − 0.5867071 = 0.0863046
    np.testing.assert_allclose(unc.expected_entropy(samples), [0.5867071], atol=1e-7)
    np.testing.assert_allclose(unc.mutual_information(samples), [0.0863046], atol=1e-7)
    np.testing.assert_allclose(unc.predictive_entropy(samples.mean(0)), [0.6730117], atol=1e-7)


def test_mutual_information_is_zero_when_samples_agree():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=6)  # [N=6, C=4]
    np.testing.assert_allclose(unc.mutual_information(np.stack([probs] * 5)), np.zeros(6), atol=1e-12)  # mean: rounding
    np.testing.assert_array_equal(unc.mutual_information(probs[None]), np.zeros(6))  # S = 1


def test_mutual_information_is_non_negative():
    samples = np.random.default_rng(1).dirichlet(np.full(5, 0.3), size=(10, 200))  # [S, N, C]
    mi = unc.mutual_information(samples)
    assert (mi >= 0).all() and mi.max() > 0.1


# --- selective prediction -------------------------------------------------------------------------------------------


def test_risk_coverage_and_aurc_hand_computed():
    conf = np.array([0.6, 0.9, 0.7, 0.8])  # input order does not matter
    correct = np.array([0, 1, 1, 0])
    # most confident first: 0.9 ✓, 0.8 ✗, 0.7 ✓, 0.6 ✗
    # risk at k = 1..4: 0/1, 1/2, 1/3, 2/4 ; AURC = (0 + 1/2 + 1/3 + 1/2)/4 = 1/3
    coverage, risk = unc.risk_coverage(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 1 / 2])
    assert unc.aurc(conf, correct) == pytest.approx(1 / 3)


def test_aurc_ties_take_the_expectation_over_tie_orders():
    conf = np.array([0.5, 0.9, 0.5, 0.5])
    correct = np.array([0, 1, 1, 0])
    # k=1: 0.9 ✓ → 0. The tie group {0.5} has 3 members, 2 wrong: each accepted member brings 2/3 of an error.
    # k=2: (2/3)/2 = 1/3 ; k=3: (4/3)/3 = 4/9 ; k=4: 2/4 = 1/2 ; AURC = (0 + 1/3 + 4/9 + 1/2)/4 = 23/72
    assert unc.aurc(conf, correct) == pytest.approx(23 / 72)
    # brute force: the mean of the plain prefix risk over every order of the tied examples
    curves = []
    for tied in itertools.permutations([0, 2, 3]):
        errors = 1 - correct[[1, *tied]]
        curves.append(np.cumsum(errors) / np.arange(1, 5))
    np.testing.assert_allclose(unc.risk_coverage(conf, correct)[1], np.mean(curves, axis=0))


def test_aurc_of_a_constant_confidence_is_the_error_rate():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    assert unc.aurc(np.full(8, 0.7), correct) == pytest.approx(2 / 8)


def test_accuracy_at_coverage_hand_computed():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.55])
    correct = np.array([1, 0, 1, 0, 0])
    # 80 % of 5 = 4 most confident: ✓ ✗ ✓ ✗ → 2/4 ; 50 % of 5 = 2.5 → ⌈2.5⌉ = 3: ✓ ✗ ✓ → 2/3 ; 100 % → 2/5
    assert unc.accuracy_at_coverage(conf, correct, 0.8) == pytest.approx(0.5)
    assert unc.accuracy_at_coverage(conf, correct, 0.5) == pytest.approx(2 / 3)
    assert unc.accuracy_at_coverage(conf, correct, 1.0) == pytest.approx(0.4)


def test_accuracy_at_coverage_counts_through_float_rounding():
    # 0.55 · 100 = 55.000000000000007 in floating point: the coverage is 55 examples, not 56.
    conf = np.linspace(1.0, 0.0, 100)
    correct = np.r_[np.ones(55), np.zeros(45)]
    assert unc.accuracy_at_coverage(conf, correct, 0.55) == 1.0


def test_accuracy_at_coverage_refuses_a_coverage_outside_0_1():
    with pytest.raises(ValueError, match="coverage must be in"):
        unc.accuracy_at_coverage(np.ones(3), np.ones(3), 1.5)


# --- misclassification and OOD detection ----------------------------------------------------------------------------


def test_misclassification_auroc_hand_computed():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 0, 1, 0])
    # (correct, wrong) pairs: (0.9, 0.8) ✓ (0.9, 0.6) ✓ (0.7, 0.8) ✗ (0.7, 0.6) ✓ → 3/4
    assert unc.misclassification_auroc(conf, correct) == pytest.approx(0.75)
    assert unc.misclassification_auroc(np.array([0.9, 0.9]), np.array([1, 0])) == pytest.approx(0.5)  # tie: 1/2
    assert math.isnan(unc.misclassification_auroc(conf, np.ones(4)))  # no wrong prediction: undefined


def test_ood_auroc_hand_computed():
    score_id = np.array([0.1, 0.4, 0.35])
    score_ood = np.array([0.8, 0.3])
    # (OOD, ID) pairs with OOD above: 0.8 > all three ; 0.3 > 0.1 only → 4/6
    assert unc.ood_auroc(score_id, score_ood) == pytest.approx(4 / 6)


def test_ood_auroc_is_1_on_separable_and_half_on_identical_scores():
    assert unc.ood_auroc(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    assert unc.ood_auroc(np.array([0.8, 0.9]), np.array([0.1, 0.2])) == 0.0
    same = np.array([0.1, 0.5, 0.9])
    assert unc.ood_auroc(same, same) == 0.5


def test_fpr_at_95_tpr_counted():
    score_id = np.arange(20) / 100  # 0.00 … 0.19
    score_ood = np.array([0.05, 0.15, 0.18, 0.5, 0.9])
    # keeping ≥ 95 % of the 20 ID examples = 19 → accept scores ≤ 0.18.
    # OOD accepted: 0.05, 0.15 and 0.18 (tied with the threshold) → 3/5
    assert unc.fpr_at_95_tpr(score_id, score_ood) == pytest.approx(0.6)
    assert unc.fpr_at_95_tpr(score_id, score_ood + 1.0) == 0.0  # separable: no OOD accepted
    # 12 ID examples: 11/12 = 91.7 % < 95 %, so all 12 must be kept (not the nearest TPR, 11/12): accept ≤ 0.11;
    # OOD 0.105 accepted, 0.5 not → 1/2
    assert unc.fpr_at_95_tpr(np.arange(12) / 100, np.array([0.105, 0.5])) == pytest.approx(0.5)


def test_uncertainty_metrics_hand_computed_deterministic():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 0, 1])
    # confidence 0.9 ✓, 0.8 ✗, 0.7 ✓, 0.6 ✗, 0.55 ✗ (already sorted)
    # risk k=1..5: 0, 1/2, 1/3, 2/4, 3/5 → AURC = (0 + 1/2 + 1/3 + 1/2 + 3/5)/5 = 29/75
    # 80 %: the top 4 → 2/4 ; misclassification AUROC: 0.9 beats 3 wrong, 0.7 beats 0.6 and 0.55 → 5/6
    out = unc.uncertainty_metrics(probs, labels)
    entropy = np.mean([h2(0.9), h2(0.2), h2(0.7), h2(0.4), h2(0.55)])
    assert out == pytest.approx(
        {
            "entropy": entropy,
            "expected_entropy": entropy,  # one deterministic predictive: E = H
            "mi": 0.0,
            "aurc": 29 / 75,
            "acc_at_80": 0.5,
            "misclf_auroc": 5 / 6,
        }
    )


def test_uncertainty_metrics_with_samples():
    probs = np.array([[0.9, 0.1], [0.5, 0.5]])
    samples = np.array([[[1.0, 0.0], [0.8, 0.2]], [[0.8, 0.2], [0.2, 0.8]]])  # [S=2, N=2, C=2], mean = probs
    out = unc.uncertainty_metrics(probs, np.array([0, 1]), samples)
    expected = np.mean([(h2(1.0) + h2(0.8)) / 2, (h2(0.8) + h2(0.2)) / 2])  # (0.2502 + 0.5004)/2
    assert out["entropy"] == pytest.approx((h2(0.9) + LN2) / 2)
    assert out["expected_entropy"] == pytest.approx(expected)
    assert out["mi"] == pytest.approx(out["entropy"] - expected)


def test_ood_metrics_hand_computed():
    id_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])  # max p: 0.9, 0.8, 0.7
    ood_probs = np.array([[0.25, 0.75], [0.6, 0.4]])  # max p: 0.75, 0.6
    # score −max p: ID −0.9, −0.8, −0.7 ; OOD −0.75 (above 2 ID), −0.6 (above 3) → AUROC 5/6.
    # FPR95: all 3 ID kept → accept scores ≤ −0.7 → OOD −0.75 accepted, −0.6 not → 1/2.
    # Binary entropy falls with max p, so the entropy score ranks identically.
    # No samples: MI is 0 everywhere, a constant score: AUROC 1/2, every OOD example accepted.
    out = unc.ood_metrics(id_probs, ood_probs)
    assert out == pytest.approx(
        {
            "ood_auroc_maxprob": 5 / 6,
            "ood_fpr95_maxprob": 0.5,
            "ood_auroc_entropy": 5 / 6,
            "ood_fpr95_entropy": 0.5,
            "ood_auroc_mi": 0.5,
            "ood_fpr95_mi": 1.0,
        }
    )


def test_ood_metrics_mi_from_samples():
    id_probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    ood_probs = np.array([[0.5, 0.5], [0.5, 0.5]])
    id_samples = np.stack([id_probs, id_probs])  # samples agree: MI 0
    ood_samples = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # disagree: MI ln 2
    out = unc.ood_metrics(id_probs, ood_probs, id_samples, ood_samples)
    assert out["ood_auroc_mi"] == 1.0 and out["ood_fpr95_mi"] == 0.0
    with pytest.raises(ValueError, match="for both"):
        unc.ood_metrics(id_probs, ood_probs, id_samples, None)
