"""Uncertainty judged by what it is for: entropy decomposition, selective prediction, misclassification and
out-of-distribution detection, on numpy arrays of predictive probabilities.

Shapes: ``probs`` ``[N, C]`` (the predictive, MC-averaged for sampled methods), ``sample_probs`` ``[S, N, C]``
(one row of probabilities per posterior sample), ``labels`` ``[N]``. Every function returns Python floats or
float64 arrays, so results serialise straight to JSON/CSV.

Definitions (natural logarithms, so entropies are in nats):

- predictive entropy ``H[p̄]``; expected (aleatoric) entropy ``E = mean_s H[p_s]``; mutual information (epistemic)
  ``MI = H[p̄] − E`` with ``p̄ = mean_s p_s`` (Depeweg et al. 2018; Smith & Gal 2018). ``MI ≥ 0`` by concavity of
  ``H``; a deterministic predictive (one sample, or identical samples) has ``MI = 0``.
- selective prediction (Geifman & El-Yaniv 2017; Geifman et al. 2019): accept the ``k`` most confident examples;
  the selective risk at coverage ``k/N`` is their error rate; AURC is the mean of the risk over ``k = 1..N``.
- misclassification detection: AUROC of the confidence (max ``p̄``) for "correct" (positive) against "wrong".
- OOD detection: scores where **higher means more likely OOD** (``−max p̄``, ``H[p̄]``, MI), the OOD set the
  positive class of the AUROC; FPR at 95 % TPR as in the OOD literature (ODIN, Liang et al. 2018; energy score,
  Liu et al. 2020; OpenOOD): the fraction of OOD examples still accepted as in-distribution at the threshold that
  keeps 95 % of the in-distribution examples.

ROC curves and their areas come from scikit-learn (``roc_auc_score``, ``roc_curve``): numpy in, exact ties
(a tied pair counts 1/2 in the AUROC), and the implementation the OOD literature's evaluation code calls, so our
AUROCs are the numbers those tables mean. It is a declared runtime dependency because the leaderboard recomputes
these metrics from saved predictions.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

# p·log p → 0 as p → 0; clamping inside the log keeps 0·log 0 = 0 without warnings.
_TINY = np.finfo(np.float64).tiny
# Coverage·N is rounded up to an integer count; this slack keeps 0.55·100 = 55.000000000000007 at 55.
_COUNT_SLACK = 1e-9
TPR_LEVEL = 0.95


def _probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"expected {name} of shape [N, C], got {probs.shape}")
    return probs


def _samples(sample_probs: np.ndarray, name: str = "sample_probs") -> np.ndarray:
    sample_probs = np.asarray(sample_probs, dtype=np.float64)
    if sample_probs.ndim != 3 or sample_probs.shape[0] < 1:
        raise ValueError(f"expected {name} of shape [S, N, C] with S >= 1, got {sample_probs.shape}")
    return sample_probs


def _scores(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct).astype(bool)
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(
            f"expected non-empty confidence [N] and correct [N], got {confidence.shape} and {correct.shape}"
        )
    if not np.isfinite(confidence).all():
        raise ValueError("confidence holds NaN or infinite values")
    return confidence, correct


def _entropy(probs: np.ndarray) -> np.ndarray:
    """−Σ_c p_c log p_c along the last axis."""
    return -(probs * np.log(np.clip(probs, _TINY, None))).sum(-1)


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of the predictive ``H[p̄]`` per example ``[N]`` (nats): total uncertainty, the OOD score that needs
    no samples."""
    return _entropy(_probs(probs))


def expected_entropy(sample_probs: np.ndarray) -> np.ndarray:
    """``mean_s H[p_s]`` per example ``[N]`` (nats): the aleatoric part, the uncertainty each posterior sample
    already has on its own."""
    return _entropy(_samples(sample_probs)).mean(0)


def mutual_information(sample_probs: np.ndarray) -> np.ndarray:
    """``H[mean_s p_s] − mean_s H[p_s]`` per example ``[N]`` (nats): the epistemic part, how much the posterior
    samples disagree. Non-negative by concavity of ``H``; the rounding-level negatives that float arithmetic can
    leave are set to 0. One sample (a deterministic predictive) gives exactly 0."""
    sample_probs = _samples(sample_probs)
    mi = _entropy(sample_probs.mean(0)) - _entropy(sample_probs).mean(0)
    return np.maximum(mi, 0.0)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical risk–coverage curve (Geifman & El-Yaniv 2017) at the ``N`` coverages ``k/N``, ``k = 1..N``.

    Returns ``(coverage, risk)``, both ``[N]``: ``risk[k−1]`` is the error rate of the ``k`` most confident
    examples. **Ties**: examples of equal confidence cannot be told apart by any threshold, so inside a tie group
    the ``j``-th accepted example brings the group's mean error; the risk is then the expectation over every order
    of the tied examples, and the curve (and AURC, accuracy at coverage) does not depend on input order, as the
    AUROC counts a tied pair 1/2.
    """
    confidence, correct = _scores(confidence, correct)
    n = confidence.size
    order = np.argsort(-confidence, kind="stable")
    conf, errors = confidence[order], (~correct[order]).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])  # first index of each tie group
    sizes = np.diff(np.r_[starts, n])
    group_errors = np.add.reduceat(errors, starts)
    errors_before = np.r_[0.0, np.cumsum(group_errors)[:-1]]
    group = np.repeat(np.arange(starts.size), sizes)  # [N] tie group of each sorted position
    k = np.arange(1, n + 1, dtype=np.float64)
    cum_errors = errors_before[group] + (k - starts[group]) * group_errors[group] / sizes[group]
    return k / n, cum_errors / k


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve as Geifman et al. (ICLR 2019) define it: the mean selective risk over the
    ``N`` coverages ``k/N``, lower is better; a constant confidence gives the error rate. torch-uncertainty's
    ``AURC`` instead integrates by trapezoids from ``1/N`` to 1 and rescales by ``1/(1 − 1/N)``, which differs by
    O(1/N)."""
    return float(risk_coverage(confidence, correct)[1].mean())


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float = 0.8) -> float:
    """Accuracy of the ``k = ⌈coverage·N⌉`` most confident examples (at least the requested coverage; the same
    rounding as torch-uncertainty's risk at coverage), ties as in :func:`risk_coverage`."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    _, risk = risk_coverage(confidence, correct)
    k = max(1, math.ceil(coverage * risk.size - _COUNT_SLACK))
    return float(1.0 - risk[k - 1])


def misclassification_auroc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of the confidence separating correct (positive) from wrong predictions: the probability that a random
    correct example is more confident than a random wrong one (ties 1/2). NaN when all are correct or all wrong,
    where it is undefined."""
    confidence, correct = _scores(confidence, correct)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, confidence))


def _id_ood(score_id: np.ndarray, score_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score_id = np.asarray(score_id, dtype=np.float64).ravel()
    score_ood = np.asarray(score_ood, dtype=np.float64).ravel()
    if score_id.size == 0 or score_ood.size == 0:
        raise ValueError(f"need in-distribution and OOD scores, got {score_id.size} and {score_ood.size}")
    if not (np.isfinite(score_id).all() and np.isfinite(score_ood).all()):
        raise ValueError("OOD scores hold NaN or infinite values")
    is_ood = np.r_[np.zeros(score_id.size, bool), np.ones(score_ood.size, bool)]
    return np.r_[score_id, score_ood], is_ood


def ood_auroc(score_id: np.ndarray, score_ood: np.ndarray) -> float:
    """AUROC of an OOD score, **higher = more likely OOD** (pass ``−max p̄``, not ``max p̄``), with the OOD set the
    positive class: the probability that a random OOD example scores above a random in-distribution one (ties 1/2).
    0.5 is chance; the same number as the in-distribution-positive AUROC of the negated score."""
    scores, is_ood = _id_ood(score_id, score_ood)
    return float(roc_auc_score(is_ood, scores))


def fpr_at_95_tpr(score_id: np.ndarray, score_ood: np.ndarray) -> float:
    """FPR at 95 % TPR of an OOD score (**higher = more likely OOD**), as ODIN, the energy score and OpenOOD report
    it: accept as in-distribution every example scoring at or below a threshold, choose the lowest threshold that
    accepts at least 95 % of the in-distribution examples (the true positives of this rate), and return the fraction
    of OOD examples it also accepts (lower is better). Examples tied at the threshold are accepted together."""
    scores, is_ood = _id_ood(score_id, score_ood)
    # In-distribution is the positive class of this rate; roc_curve accepts "score >= threshold", so negate.
    fpr, tpr, _ = roc_curve(~is_ood, -scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= TPR_LEVEL - 1e-12)])


def _sampled_mi(probs: np.ndarray, sample_probs: np.ndarray | None, name: str) -> np.ndarray:
    """MI per example, 0 for a deterministic predictive (no samples)."""
    if sample_probs is None:
        return np.zeros(probs.shape[0])
    sample_probs = _samples(sample_probs, name)
    if sample_probs.shape[1:] != probs.shape:
        raise ValueError(f"{name} {sample_probs.shape} does not match the predictive {probs.shape} as [S, N, C]")
    return mutual_information(sample_probs)


def uncertainty_metrics(
    probs: np.ndarray, labels: np.ndarray, sample_probs: np.ndarray | None = None
) -> dict[str, float]:
    """The uncertainty columns of one evaluation set: mean predictive entropy, mean expected entropy, mean MI,
    AURC, accuracy at 80 % coverage and misclassification AUROC, with confidence = max ``p̄``.

    Without ``sample_probs`` the predictive is deterministic: expected entropy equals the entropy and MI is 0.
    With them, the entropy is still that of ``probs`` (the predictive the other metrics score) and E and MI come
    from the samples alone.
    """
    probs = _probs(probs)
    labels = np.asarray(labels)
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"expected labels [N] for probs {probs.shape}, got {labels.shape}")
    mi = _sampled_mi(probs, sample_probs, "sample_probs")  # checks the samples' shape first
    entropy = predictive_entropy(probs)
    aleatoric = entropy if sample_probs is None else expected_entropy(sample_probs)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    return {
        "entropy": float(entropy.mean()),
        "expected_entropy": float(aleatoric.mean()),
        "mi": float(mi.mean()),
        "aurc": aurc(confidence, correct),
        "acc_at_80": accuracy_at_coverage(confidence, correct, 0.8),
        "misclf_auroc": misclassification_auroc(confidence, correct),
    }


def ood_metrics(
    id_probs: np.ndarray,
    ood_probs: np.ndarray,
    id_samples: np.ndarray | None = None,
    ood_samples: np.ndarray | None = None,
) -> dict[str, float]:
    """OOD AUROC and FPR at 95 % TPR of one OOD set against the in-distribution evaluation set, for the three scores
    ``maxprob`` (scored as ``−max p̄``), ``entropy`` (``H[p̄]``) and ``mi``. A deterministic predictive (no samples
    on either side) has MI 0 everywhere: a constant score, AUROC 0.5 and FPR 1.0, i.e. it detects nothing.
    Samples on one side only is an error (the two MI scores would not be comparable)."""
    id_probs, ood_probs = _probs(id_probs, "id_probs"), _probs(ood_probs, "ood_probs")
    if (id_samples is None) != (ood_samples is None):
        raise ValueError("give posterior samples for both the in-distribution and the OOD set, or for neither")
    scores = {
        "maxprob": (-id_probs.max(-1), -ood_probs.max(-1)),
        "entropy": (predictive_entropy(id_probs), predictive_entropy(ood_probs)),
        "mi": (_sampled_mi(id_probs, id_samples, "id_samples"), _sampled_mi(ood_probs, ood_samples, "ood_samples")),
    }
    out: dict[str, float] = {}
    for name, (score_id, score_ood) in scores.items():
        out[f"ood_auroc_{name}"] = ood_auroc(score_id, score_ood)
        out[f"ood_fpr95_{name}"] = fpr_at_95_tpr(score_id, score_ood)
    return out
