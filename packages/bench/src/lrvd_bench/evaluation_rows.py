"""Trial rows → one row per (trial, evaluation task), with the uncertainty columns recomputed from the files.

A trial trained on ``task`` is scored on its own evaluation split (``shift = id``) and on each task of
``eval_tasks`` (``shift = ood``; :mod:`lrvd_bench.evaluation`). The leaderboard aggregates these rows, so
it has one row per (method, training task, evaluation task). Accuracy, ECE, NLL, Brier and MCC come from
the trial's ``result.json`` (its own row for the ID set, ``evaluations`` for the others); the uncertainty
columns (:mod:`lrvd.uncertainty`) are computed here from the saved predictions
(:mod:`lrvd_bench.predictions`) every time the leaderboard is built, so ``bench leaderboard RUN`` rebuilds
them from the run folder alone:

* ``entropy``, ``expected_entropy``, ``mi``: mean predictive entropy, mean expected entropy over the
  posterior draws and mean mutual information (nats); a deterministic predictive has ``mi = 0`` and
  ``expected_entropy = entropy``; a closed-form Bayesian predictive (Laplace's probit) saves no draws, so
  both are left empty;
* ``aurc``, ``acc_at_80``, ``misclf_auroc``: selective prediction and misclassification detection with
  the confidence max p̄;
* on ``ood`` rows, ``ood_auroc_<score>`` and ``ood_fpr95_<score>`` for the scores ``maxprob``, ``entropy``
  and ``mi``: the OOD set against the same trial's in-distribution evaluation set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: The columns this module adds, each with higher_is_better (None: no direction), aggregated as
#: ``_mean`` / ``_std`` by the leaderboard.
UNCERTAINTY_METRICS: dict[str, bool | None] = {
    "entropy": None,
    "expected_entropy": None,
    "mi": None,
    "aurc": False,
    "acc_at_80": True,
    "misclf_auroc": True,
}
OOD_SCORES = ("maxprob", "entropy", "mi")
#: The OOD columns (``ood`` rows only): AUROC higher is better, FPR at 95 % TPR lower.
OOD_METRICS: dict[str, bool] = {
    f"ood_{kind}_{score}": kind == "auroc" for kind in ("auroc", "fpr95") for score in OOD_SCORES
}
#: What an ``evaluations`` entry of a trial row replaces in the copy of the row it becomes.
SCORED = ("accuracy", "ece", "nll", "brier", "mcc", "n_eval", "eval_time_s", "predictive")


def evaluation_rows(rows: list[dict[str, Any]], run_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Each trial row as its ID row plus one row per other evaluation task, each with ``eval_task``,
    ``shift`` and (with ``run_dir``, for finished trials with saved predictions) the uncertainty columns."""
    out = []
    for row in rows:
        task = row.get("task")
        own = {**row, "eval_task": task, "shift": "id"}
        out.append(own)
        extra = [
            {**row, **{k: v for k, v in scores.items() if k in SCORED}, "eval_task": name, "shift": "ood"}
            for name, scores in (row.get("evaluations") or {}).items()
        ]
        out.extend(extra)
        if run_dir is not None and row.get("status") == "ok" and row.get("trial_id"):
            add_uncertainty(Path(run_dir) / "trials" / str(row["trial_id"]), own, extra)
    return out


def add_uncertainty(trial_dir: Path, own: dict[str, Any], others: list[dict[str, Any]]) -> None:
    """Fill the uncertainty columns of one trial's rows from its prediction files (rows without files stay)."""
    from lrvd.uncertainty import ood_metrics, uncertainty_metrics
    from lrvd_bench.predictions import read_predictions

    task = str(own["task"])
    reference = read_predictions(trial_dir, task)
    for row in (own, *others):
        saved = reference if row is own else read_predictions(trial_dir, task, str(row["eval_task"]))
        if saved is None:
            continue
        # a closed-form predictive saves no draws; a row without ``predictive`` predates saved draws
        closed_form = row.get("predictive") in ("closed-form", None) and saved.sample_probs is None
        metrics = uncertainty_metrics(saved.probs, saved.labels, saved.sample_probs)
        if closed_form:
            metrics["expected_entropy"] = metrics["mi"] = math.nan
        row.update(metrics)
        if row is own or reference is None:
            continue
        both = reference.sample_probs is not None and saved.sample_probs is not None
        ood = ood_metrics(
            reference.probs,
            saved.probs,
            reference.sample_probs if both else None,
            saved.sample_probs if both else None,
        )
        if closed_form or (reference.sample_probs is None) != (saved.sample_probs is None):
            ood = {k: (math.nan if k.endswith("_mi") else v) for k, v in ood.items()}
        row.update(ood)
