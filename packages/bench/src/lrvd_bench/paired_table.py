"""The leaderboard's paired differences: ``delta_*`` / ``poi_*`` columns and the tables under the leaderboard.

Every row is compared with the run's reference method on the same evaluation questions
(:mod:`lrvd_bench.paired`) and seeds (:mod:`lrvd_bench.seed_bootstrap`):

* ``delta_<metric>``, ``_lo``, ``_hi``: Δ and its seed-aware 95 % interval (two-level bootstrap);
  ``_p`` its two-sided p, ``_p_holm`` Holm-adjusted over every seed-aware test of the task's table,
  ``_significant`` = ``_p_holm < 0.05`` (the ``*``);
* ``delta_<metric>_questions_lo`` / ``_hi``: the question-only interval, conditional on these seeds;
* ``delta_<metric>_per_seed``, ``_better_seeds``: per-seed differences and how many favour the method;
* ``poi_<metric>``, ``_lo``, ``_hi``: probability of improvement with its interval;
* ``delta_<metric>_mc_se``: the largest Monte-Carlo standard error of that metric's interval ends.

Pairing: per seed over the seeds both completed; a row with one trial against a reference with
several (``lora-ensemble``, built from the reference's seeds) is compared with the reference's seed
mean (``delta_pairing``).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lrvd_bench.paired import (
    LEVEL,
    MAX_RESAMPLES,
    N_RESAMPLES,
    PAIRED_METRICS,
    TrialScores,
    ece_bca_interval,
    resample_questions,
    score_trial,
)
from lrvd_bench.predictions import read_predictions
from lrvd_bench.seed_bootstrap import (
    ALPHA,
    MC_SE_TARGET,
    TwoLevel,
    draw_seeds,
    holm,
    probability_of_improvement,
    quantile_mc_se,
)
from lrvd_bench.table_cells import significant

PER_SEED, SEED_MEAN = "per seed", "reference seed mean"
LABELS = {"accuracy": "Δacc", "ece": "ΔECE", "nll": "ΔNLL", "brier": "ΔBrier"}
SUFFIXES = (
    "",
    "_lo",
    "_hi",
    "_p",
    "_p_holm",
    "_significant",
    "_mc_se",
    "_questions_lo",
    "_questions_hi",
    "_per_seed",
    "_better_seeds",
)


def table_label(row: Any) -> str:
    """The table a leaderboard row belongs to: its training task, and ``→ eval task`` under shift. Each table
    is one Holm family: the tests that answer "do the methods differ on this evaluation set?"."""
    task, eval_task = str(row["task"]), row.get("eval_task")
    return task if not isinstance(eval_task, str) or eval_task in ("", task) else f"{task} → {eval_task}"


def pair(
    method: dict[int, TrialScores], reference: dict[int, TrialScores]
) -> tuple[str, list[int], list[TrialScores], list[TrialScores]]:
    """(pairing, seeds, aligned method scores, aligned reference scores).

    Raises ``ValueError`` when no seed is shared or paired trials answered different questions.
    """
    if len(method) == 1 and len(reference) > 1:
        seeds = sorted(reference)
        pairing, own = SEED_MEAN, [next(iter(method.values()))] * len(seeds)
    else:
        seeds = sorted(set(method) & set(reference))
        pairing, own = PER_SEED, [method[s] for s in seeds]
    if not seeds:
        raise ValueError("no seed in common with the reference")
    ref = [reference[s] for s in seeds]
    for s, m, r in zip(seeds, own, ref):
        if not np.array_equal(m.labels, r.labels):
            raise ValueError(f"seed {s}: the evaluation questions differ from the reference's")
    return pairing, seeds, own, ref


def two_levels(own: list[TrialScores], ref: list[TrialScores], stream: int = 0) -> dict[str, TwoLevel]:
    """One :class:`TwoLevel` per paired metric; the seed draw depends only on the number of seeds (and ``stream``)."""
    n_resamples = len(own[0].resampled["accuracy"])
    draws = draw_seeds(len(own), n_resamples, seed=stream)
    out = {}
    for name in PAIRED_METRICS:
        out[name] = TwoLevel(
            np.array([t.point[name] for t in own]),
            np.array([t.point[name] for t in ref]),
            np.stack([t.resampled[name] for t in own]),
            np.stack([t.resampled[name] for t in ref]),
            draws,
            bias_correct=name == "ece",
        )
    return out


def end_mc_ses(name: str, tl: TwoLevel) -> list[float]:
    """Monte-Carlo standard errors of a metric's seed-aware and percentile question-only interval ends."""
    ends = [tl.mc_se()] if tl.n_seeds > 1 else []
    if name != "ece":  # ECE's question-only interval is scipy's BCa, on its own resamples
        ends += [quantile_mc_se(tl.questions_only, q) for q in ((1 - LEVEL) / 2, (1 + LEVEL) / 2)]
    return ends


def worst_mc_se(levels: dict[str, TwoLevel]) -> float:
    """Largest Monte-Carlo standard error over the seed-aware and the percentile question-only ends."""
    worst = 0.0
    for name, tl in levels.items():
        worst = max([worst, *[e for e in end_mc_ses(name, tl) if not math.isnan(e)]])
    return worst


def holm_by_task(p_values: dict[tuple[int, str], float], task_of: dict[int, str]) -> dict[tuple[int, str], float]:
    """Holm-adjusted p of every finite seed-aware p, the family being one task's table."""
    adjusted: dict[tuple[int, str], float] = {}
    for task in set(task_of.values()):
        cells = [c for c, p in p_values.items() if task_of[c[0]] == task and not math.isnan(p)]
        adjusted.update(zip(cells, holm([p_values[c] for c in cells])))
    return adjusted


def unclear_decisions(
    p_values: dict[tuple[int, str], float], adjusted: dict[tuple[int, str], float], n_resamples: int
) -> int:
    """Tests whose Holm decision could flip with the random stream: adjusted p within 3 Monte-Carlo
    standard errors of 0.05 (the raw p is about twice a tail share of ``B`` draws: binomial error,
    scaled by Holm's multiplier)."""
    unclear = 0
    for cell, adj in adjusted.items():
        p = p_values[cell]
        se = adj / p * math.sqrt(2 * p * (1 - p / 2) / n_resamples)
        unclear += abs(adj - ALPHA) < 3 * se
    return unclear


def compare(
    pairing: str, own: list[TrialScores], ref: list[TrialScores], levels: dict[str, TwoLevel]
) -> dict[str, Any]:
    """Every ``delta_*`` / ``poi_*`` column of one row (``levels``: its :func:`two_levels`) except the
    p values, set per table."""
    n_resamples = len(own[0].resampled["accuracy"])
    out: dict[str, Any] = {"delta_n_seeds": len(own), "delta_pairing": pairing, "delta_resamples": n_resamples}
    for name, higher in PAIRED_METRICS.items():
        tl = levels[name]
        key = f"delta_{name}"
        lo, hi = tl.interval()
        if name == "ece":
            qlo, qhi = ece_bca_interval(own, ref, LEVEL, n_resamples)
        if name != "ece" or math.isnan(qlo):  # BCa is undefined without spread (identical predictions)
            qlo, qhi = tl.question_interval(LEVEL)
        per_seed = tl.per_seed
        better = per_seed > 0 if higher else per_seed < 0
        poi = probability_of_improvement(tl, higher)
        mc = end_mc_ses(name, tl)
        out.update(
            {
                key: tl.delta,
                f"{key}_lo": lo,
                f"{key}_hi": hi,
                f"{key}_mc_se": max(mc) if mc else math.nan,
                f"{key}_questions_lo": qlo,
                f"{key}_questions_hi": qhi,
                f"{key}_per_seed": ";".join(f"{v:+.4f}" for v in per_seed),
                f"{key}_better_seeds": int(better.sum()),
                f"poi_{name}": poi[0],
                f"poi_{name}_lo": poi[1],
                f"poi_{name}_hi": poi[2],
            }
        )
    return out


def add_paired_deltas(board, frame, run_dir: str | Path | None, reference: str):
    """``reference`` and the module's columns for every row of ``board``.

    A row is paired with the reference's trials of the same task and model: those with the same
    search point, else the reference's only search point. The reference's own row, rows without
    predictions and rows whose questions differ from the reference's keep NaN. Resamples start at
    :data:`N_RESAMPLES` and double until every interval end's Monte-Carlo standard error is below
    :data:`MC_SE_TARGET` (at most :data:`MAX_RESAMPLES`).
    """
    board["reference"] = reference
    for metric in PAIRED_METRICS:
        for suffix in SUFFIXES:
            board[f"delta_{metric}{suffix}"] = False if suffix == "_significant" else math.nan
        for suffix in ("", "_lo", "_hi"):
            board[f"poi_{metric}{suffix}"] = math.nan
    for column, empty in (
        ("delta_n_seeds", 0),
        ("delta_pairing", ""),
        ("delta_resamples", 0),
        ("delta_family", 0),
        ("delta_unclear", 0),
    ):
        board[column] = empty
    for metric in PAIRED_METRICS:
        board[f"delta_{metric}_per_seed"] = ""
    if run_dir is None or board.empty:
        return board
    trials = Path(run_dir) / "trials"
    ok = frame[frame["status"] == "ok"]
    if "stage" in ok.columns:  # selection-stage trials never predict the evaluation split
        ok = ok[ok["stage"].fillna("") != "selection"]
    seeds_of: dict[tuple, dict[int, str]] = {}
    for r in ok.itertuples():
        seeds_of.setdefault((r.task, r.eval_task, r.method, r.model, r.search_point), {})[int(r.seed)] = (
            r.trial_id,
            r.task,
            r.eval_task,
        )
    predictions: dict[tuple, Any] = {}

    def loaded(key: tuple[str, str, str]):
        if key not in predictions:
            trial_id, task, eval_task = key
            saved = read_predictions(trials / trial_id, task, eval_task)
            predictions[key] = None if saved is None else (saved.probs, saved.labels)
        return predictions[key]

    pairs: dict[int, tuple[dict, dict]] = {}
    for i, row in board.iterrows():
        if row["method"] == reference:
            continue
        table = (row["task"], row["eval_task"])
        ref_points = {k[4]: v for k, v in seeds_of.items() if k[:4] == (*table, reference, row["model"])}
        ref_ids = ref_points.get(row["search_point"]) or (
            next(iter(ref_points.values())) if len(ref_points) == 1 else None
        )
        own_ids = seeds_of.get((*table, row["method"], row["model"], row["search_point"]), {})
        own = {s: t for s, t in own_ids.items() if loaded(t) is not None}
        ref = {s: t for s, t in (ref_ids or {}).items() if loaded(t) is not None}
        if own and ref:
            pairs[i] = (own, ref)

    n_resamples = N_RESAMPLES
    while True:
        paired = score_pairs(pairs, loaded, n_resamples)
        levels = {i: two_levels(p[2], p[3]) for i, p in paired.items()}
        p_values = {(i, m): tl.p_value() for i, lv in levels.items() for m, tl in lv.items()}
        adjusted = holm_by_task(p_values, {i: table_label(board.loc[i]) for i in levels})
        worst = max([worst_mc_se(lv) for lv in levels.values()], default=0.0)
        unclear = unclear_decisions(p_values, adjusted, n_resamples)
        if (worst < MC_SE_TARGET and not unclear) or n_resamples >= MAX_RESAMPLES:
            break
        n_resamples *= 2
    board["delta_unclear"] = unclear
    for i, (pairing, _, own, ref) in paired.items():
        for column, value in compare(pairing, own, ref, levels[i]).items():
            board.at[i, column] = value
        for m in PAIRED_METRICS:
            board.at[i, f"delta_{m}_p"] = p_values[i, m]
    for (i, m), p in adjusted.items():
        board.at[i, f"delta_{m}_p_holm"] = p
        board.at[i, f"delta_{m}_significant"] = bool(p < ALPHA)
    family = Counter(table_label(board.loc[i]) for i, _ in adjusted)
    tables = board.apply(table_label, axis=1)
    for table, group in board.groupby(tables):
        board.loc[group.index, "delta_family"] = family[table]
    return board


def score_pairs(pairs: dict[int, tuple[dict, dict]], loaded, n_resamples: int) -> dict[int, tuple]:
    """Row index → :func:`pair` of its trials scored on ``n_resamples`` question resamples (rows that
    cannot be paired are left out). Trials with as many questions share one resample draw."""
    scores: dict[Any, TrialScores] = {}
    resamples: dict[int, np.ndarray] = {}

    def scored(trial_id: Any) -> TrialScores:
        if trial_id not in scores:
            probs, labels = loaded(trial_id)
            if len(labels) not in resamples:
                resamples[len(labels)] = resample_questions(len(labels), n_resamples, seed=0)
            scores[trial_id] = score_trial(probs, labels, resamples[len(labels)])
        return scores[trial_id]

    paired = {}
    for i, (own_ids, ref_ids) in pairs.items():
        try:
            paired[i] = pair({s: scored(t) for s, t in own_ids.items()}, {s: scored(t) for s, t in ref_ids.items()})
        except ValueError:  # no shared seed with predictions, or different questions
            continue
    return paired


# -- Markdown ------------------------------------------------------------------------------------
def _num(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _cell(row, metric: str) -> str:
    key = f"delta_{metric}"
    delta, lo, hi = (row.get(f"{key}{s}", math.nan) for s in ("", "_lo", "_hi"))
    if not _num(delta):
        return "–"
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if _num(lo) else " [one seed: –]"
    star = " *" if significant(row, metric) else ""
    better = f" ({int(row[f'{key}_better_seeds'])}/{int(row['delta_n_seeds'])})"
    return f"{delta:+.3f}{interval}{star}{better}"


def _seed_cell(row, metric: str) -> str:
    per_seed = str(row.get(f"delta_{metric}_per_seed") or "")
    if not per_seed or per_seed == "nan":
        return "–"
    values = ", ".join(f"{float(v):+.3f}" for v in per_seed.split(";"))
    p, lo, hi = (row.get(f"poi_{metric}{s}", math.nan) for s in ("", "_lo", "_hi"))
    return f"{values}; P {p:.2f} [{lo:.2f}, {hi:.2f}]"


def _question_cell(row, metric: str) -> str:
    delta, lo, hi = (row.get(f"delta_{metric}{s}", math.nan) for s in ("", "_questions_lo", "_questions_hi"))
    return "–" if not _num(delta) else f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _table(board, reference: str, header_tail: list[str], cell) -> list[str]:
    search = "search_point" in board.columns
    header = ["task" if all(table_label(r) == r["task"] for _, r in board.iterrows()) else "task → evaluated on"]
    header += ["method"] + (["search point"] if search else []) + ["seeds"] + header_tail
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in board.iterrows():
        if row["method"] == reference or not _num(row["delta_accuracy"]):
            continue
        cells = [table_label(row), row["method"]] + ([row["search_point"]] if search else [])
        cells += [str(int(row["delta_n_seeds"]))] + [cell(row, m) for m in PAIRED_METRICS]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def paired_markdown(board) -> list[str]:
    """The paired tables under the leaderboard (lines, led by a blank line); empty when no row has a Δ."""
    if "delta_accuracy" not in board.columns or board["delta_accuracy"].isna().all():
        return []
    reference = board["reference"].iloc[0]
    rows = board[board["delta_accuracy"].notna()]
    labels = [LABELS[m] for m in PAIRED_METRICS]
    resamples = int(rows["delta_resamples"].max()) if "delta_resamples" in rows else 0
    mc = rows[[f"delta_{m}_mc_se" for m in PAIRED_METRICS]].max().max() if "delta_accuracy_mc_se" in rows else math.nan
    family = {str(t): int(n) for t, n in rows.groupby(rows.apply(table_label, axis=1))["delta_family"].max().items()}
    lines = [
        "",
        f"Paired differences from {reference} (method − {reference}), seed-aware: Δ = mean over paired seeds of "
        f"the per-seed difference on the same questions; [95 % two-level bootstrap interval: seeds resampled "
        f"(the same draw for every method), then questions]; (k/S) = seeds at which the method is better; "
        "* = significant: Holm-adjusted p < 0.05. Accuracy up is better, ECE/NLL/Brier down is better.",
        "",
        *_table(board, reference, labels, _cell),
        "",
        "Family: "
        + "; ".join(f"{task}: the {n} seed-aware tests of this table (rows × 4 metrics)" for task, n in family.items())
        + ", Holm-corrected. An interval without * is an effect size with its uncertainty, not a significant "
        f"difference. {resamples} resamples; largest Monte-Carlo standard error of an interval end {mc:.5f}. "
        "ECE: bias-corrected percentile interval. With one seed there is no seed-aware interval (–).",
    ]
    unclear = int(rows["delta_unclear"].max()) if "delta_unclear" in rows else 0
    if unclear:
        lines.append(
            f"{unclear} * decision(s) lie within 3 Monte-Carlo standard errors of the 0.05 threshold even at "
            f"{resamples} resamples: read them as borderline."
        )
    mean_rows = rows[rows["delta_pairing"] == SEED_MEAN].drop_duplicates(["method", "delta_n_seeds"])
    for _, row in mean_rows.iterrows():
        lines.append(
            f"{row['method']} has one trial: it is compared with {reference}'s seed mean over "
            f"{int(row['delta_n_seeds'])} seeds (paired with each; (k/S) counts the {reference} seeds it beats)."
        )
    lines += [
        "",
        f"Per-seed differences from {reference} and the probability of improvement P(method better than "
        f"{reference}) over seed pairs, with its 95 % bootstrap interval:",
        "",
        *_table(board, reference, labels, _seed_cell),
        "",
        "Question-only intervals (conditional on these seeds' runs: would these runs still differ on other "
        "questions? Not a comparison of the methods, no *; ECE: BCa):",
        "",
        *_table(board, reference, labels, _question_cell),
    ]
    return lines
