"""Seed-aware paired intervals: hand-computed cases and simulated tables with and without a true effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lrvd_bench.paired import resample_questions, score_trial
from lrvd_bench.paired_table import two_levels
from lrvd_bench.seed_bootstrap import TwoLevel, holm, probability_of_improvement, quantile_mc_se, seed_scale


def test_two_level_resample_matches_a_hand_computed_case():
    point_m, point_r = np.array([0.3, 0.5, 0.1]), np.array([0.2, 0.2, 0.2])  # d = [0.1, 0.3, -0.1], Δ = 0.1
    boot_m = np.array([[0.3, 0.4], [0.5, 0.5], [0.1, 0.0]])
    boot_r = np.array([[0.2, 0.2], [0.2, 0.3], [0.2, 0.2]])  # D = [[0.1, 0.2], [0.3, 0.2], [-0.1, -0.2]]
    draws = np.array([[0, 0, 1], [2, 2, 2]])
    tl = TwoLevel(point_m, point_r, boot_m, boot_r, draws)
    assert tl.delta == pytest.approx(0.1)
    # b = 0: seeds 0, 0, 1 → seed part (0.1 + 0.1 + 0.3)/3 − 0.1; question part: D − d at those seeds on b = 0: 0, 0, 0
    # b = 1: seed 2 three times → seed part −0.2; question part (−0.2 − (−0.1)) = −0.1
    np.testing.assert_allclose(tl.seed_part, [0.5 / 3 - 0.1, -0.2])
    np.testing.assert_allclose(tl.question_part, [0.0, -0.1], atol=1e-12)
    lam = math.sqrt(1.5) * 4.302653 / 1.959964  # √(S/(S−1)) · t_2(0.975) / z(0.975)
    assert seed_scale(3) == pytest.approx(lam, rel=1e-6) and math.isnan(seed_scale(1))
    np.testing.assert_allclose(tl.resampled(), [0.1 + lam * (0.5 / 3 - 0.1), 0.1 - lam * 0.2 - 0.1])
    # question-only: every seed once, D averaged over seeds on each resample
    np.testing.assert_allclose(tl.questions_only, [0.1, 0.2 / 3])
    one = TwoLevel(point_m[:1], point_r[:1], boot_m[:1], boot_r[:1], np.zeros((2, 1), int))
    assert math.isnan(one.interval()[0]) and math.isnan(one.p_value())  # one seed: nothing to say about seeds


def test_holm_and_probability_of_improvement_match_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, math.nan, 0.005]), [0.03, 0.06, 0.06, math.nan, 0.02])
    point_m, point_r = np.array([0.5, 0.6]), np.array([0.55, 0.4])
    boot_m, boot_r = np.array([[0.5], [0.6]]), np.array([[0.55], [0.4]])
    tl = TwoLevel(point_m, point_r, boot_m, boot_r, np.array([[1, 1]]))
    # pairs (0.5, 0.55) no, (0.5, 0.4) yes, (0.6, 0.55) yes, (0.6, 0.4) yes → 3/4; resample: seed 1 twice → 0.6 > 0.4
    assert probability_of_improvement(tl, True) == pytest.approx((0.75, 1.0, 1.0))
    tie = TwoLevel(np.array([0.4, 0.6]), np.array([0.4, 0.5]), boot_m, boot_r, np.array([[0, 1]]))
    # lower is better: (0.4, 0.4) tie ½, (0.4, 0.5) yes, (0.6, ·) no, no → 1.5/4
    assert probability_of_improvement(tie, False)[0] == pytest.approx(0.375)


def test_quantile_mc_se_matches_the_spread_over_independent_streams():
    rng = np.random.default_rng(0)
    ends = [np.quantile(rng.normal(size=4000), 0.025) for _ in range(300)]
    estimate = quantile_mc_se(rng.normal(size=4000), 0.025)
    # theory: √(q(1−q)/B) / φ(z_q) = 0.0468
    theory = math.sqrt(0.025 * 0.975 / 4000) / stats.norm.pdf(stats.norm.ppf(0.025))
    assert np.std(ends) == pytest.approx(theory, rel=0.15) and estimate == pytest.approx(theory, rel=0.3)


# -- simulated tables ------------------------------------------------------------------------------
N_Q, N_CHOICES, B = 200, 4, 2000
LABELS = np.arange(N_Q) % N_CHOICES
DIFFICULTY = np.random.default_rng(99).normal(0.5, 1.0, N_Q)  # shared by every run: the same questions


def run_predictions(seed: int, flip: float = 0.0) -> np.ndarray:
    """One training run's predictive probabilities: the seed sets its skill, its temperature and which
    questions it gets right (seed × question noise); ``flip`` turns that share of its wrong answers right."""
    rng = np.random.default_rng(seed)
    skill, temperature = rng.normal(0, 0.25), math.exp(rng.normal(0, 0.35))
    logits = rng.normal(0, 0.8, (N_Q, N_CHOICES))
    logits[np.arange(N_Q), LABELS] += DIFFICULTY + skill
    probs = np.exp(logits / temperature)
    probs /= probs.sum(1, keepdims=True)
    wrong = np.flatnonzero(probs.argmax(1) != LABELS)
    for q in wrong[: round(flip * N_Q)]:  # swap the label's probability with the top one
        top = probs[q].argmax()
        probs[q, [top, LABELS[q]]] = probs[q, [LABELS[q], top]]
    return probs


def table_stars(method_seeds, reference_seeds, flip: float = 0.0, seed_aware: bool = True) -> set[str]:
    """Metrics marked * in a two-method table (Holm over its 4 tests), seeds paired by position."""
    resamples = resample_questions(N_Q, B, seed=0)
    own = [score_trial(run_predictions(s, flip), LABELS, resamples) for s in method_seeds]
    ref = [score_trial(run_predictions(s), LABELS, resamples) for s in reference_seeds]
    levels = two_levels(own, ref)
    if seed_aware:
        p = {m: tl.p_value() for m, tl in levels.items()}
    else:  # the question-only interval: seeds held fixed, as a test it ignores seed-to-seed variation
        p = {m: 2 * min(np.mean(tl.questions_only <= 0), np.mean(tl.questions_only >= 0)) for m, tl in levels.items()}
    adjusted = dict(zip(p, holm(list(p.values()))))
    return {m for m, q in adjusted.items() if q < 0.05}


def test_seed_noise_alone_gives_no_star_in_95_of_100_tables():
    """Two methods that are the same training procedure at different seeds: no true difference."""
    starred = [
        table_stars([1000 + 6 * t + i for i in range(3)], [1003 + 6 * t + i for i in range(3)]) for t in range(100)
    ]
    assert sum(bool(s) for s in starred) <= 5
    # control: the question-only interval, read as a test, stars most of these null tables
    question_only = [
        table_stars([1000 + 6 * t + i for i in range(3)], [1003 + 6 * t + i for i in range(3)], seed_aware=False)
        for t in range(20)
    ]
    assert sum(bool(s) for s in question_only) >= 10


def test_an_effect_of_three_seed_sds_is_starred():
    """Five seeds; the method turns 3 seed-SDs of the per-seed accuracy difference of wrong answers right."""
    accuracy = [(run_predictions(s).argmax(1) == LABELS).mean() for s in range(5000, 5200)]
    sd_diff = math.sqrt(2) * np.std(accuracy, ddof=1)  # SD of a per-seed difference between independent runs
    stars = [
        table_stars(range(100 * t, 100 * t + 5), range(100 * t + 50, 100 * t + 55), flip=3 * sd_diff) for t in range(5)
    ]
    assert all("accuracy" in s for s in stars)
