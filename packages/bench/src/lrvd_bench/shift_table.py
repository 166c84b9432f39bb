"""The distribution-shift tables of ``leaderboard.md``: methods × evaluation sets, one table per metric.

The layout of BLoB's and Laplace-LoRA's second table: a row per method, a column per evaluation set (the
training task's own first, marked ``id``), one table each for accuracy, ECE and NLL, and one for OOD
detection. The same numbers are rows of the leaderboard (one per method × training task × evaluation
task); this view puts a method's in-distribution and shifted scores side by side. A ``*`` marks a cell
whose seed-aware, Holm-corrected paired difference from the reference method excludes 0
(:mod:`lrvd_bench.paired_table`), so the compact table carries the same claims as the paired tables.
"""

from __future__ import annotations

import math
from typing import Any

from lrvd_bench.table_cells import mean_pm_std, significant

#: (metric, label, digits, paired): the tables, in order; ``paired`` metrics have a Δ test to mark.
SHIFT_METRICS = [
    ("accuracy", "accuracy ↑", 3, True),
    ("ece", "ECE ↓", 3, True),
    ("nll", "NLL ↓", 3, True),
    ("ood_auroc_maxprob", "OOD AUROC, −max p ↑", 3, False),
    ("ood_auroc_mi", "OOD AUROC, MI ↑", 3, False),
]


def _cell(row: Any, metric: str, digits: int, paired: bool) -> str:
    text = mean_pm_std(row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan), digits)
    if text != "–" and paired and significant(row, metric):
        text += " *"
    return text


def shift_markdown(board) -> list[str]:
    """The shift tables (lines led by a blank line); empty when no row is evaluated on another task."""
    if board.empty or "shift" not in board.columns or not (board["shift"] == "ood").any():
        return []
    lines: list[str] = []
    for task, rows in board.groupby("task", sort=False):
        if not (rows["shift"] == "ood").any():
            continue
        own = rows[rows["shift"] == "id"]
        methods = list(dict.fromkeys(list(own["method"]) + list(rows["method"])))  # ID accuracy order
        sets = [str(task)] + [e for e in dict.fromkeys(rows.loc[rows["shift"] == "ood", "eval_task"])]
        cells = {(r["method"], r["eval_task"]): r for _, r in rows.iterrows()}
        seeds = {m: int(rows.loc[rows["method"] == m, "n_seeds"].max()) for m in methods}
        sizes = {e: int(rows.loc[rows["eval_task"] == e, "n_eval"].max()) for e in sets}
        for metric, label, digits, paired in SHIFT_METRICS:
            if f"{metric}_mean" not in rows.columns or rows[f"{metric}_mean"].isna().all():
                continue
            header = [f"trained on {task}: {label}", "seeds"]
            header += [f"{e} (id, n={sizes[e]})" if e == task else f"{e} (n={sizes[e]})" for e in sets]
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method in methods:
                row = [method, str(seeds[method])]
                row += [
                    _cell(cells[(method, e)], metric, digits, paired) if (method, e) in cells else "–" for e in sets
                ]
                lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            f"Trained on {task}, the same adapters evaluated on each set without retraining (id: the training "
            "task's own evaluation split). Mean ± std over seeds; * = the seed-aware paired difference from the "
            "reference method on that set is significant (Holm-adjusted p < 0.05, the paired tables below). "
            "OOD AUROC: the set against the id set, scored by −max p or by the mutual information (0.5 = no "
            "detection; MI is 0 for a deterministic predictive, – for a closed-form one).",
        ]
    return lines
