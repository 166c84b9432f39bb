"""Trial rows → per-seed ``trials.csv`` → one leaderboard row per method × task (mean ± std).

Reads only the trial folders of a run directory (``trials/<id>/result.json`` or ``error.json``), so it
works on a finished, interrupted or copied run and never needs Ray. The column meanings are in
:data:`COLUMNS` (the README's column table is generated from it: ``python -m lrvd_bench.leaderboard``).

Policy: means and standard deviations are over the *successful* seeds (``status == ok``); failed
seeds are counted in ``n_failed``; runs that did not learn (see :mod:`lrvd_bench.trial`) stay in the
means but are counted in ``n_learned`` and marked ``†`` in the Markdown table, so a method's number
never silently hides a run stuck at chance. Standard deviations use ddof=1 (empty with one seed).

Paired differences: each row's ``delta_*`` and ``poi_*`` columns compare it with the run's
``reference`` method on the same evaluation questions and seeds, read from the trials'
``predictions.npz`` (:mod:`lrvd_bench.paired_table`; the seed-aware bootstrap in
:mod:`lrvd_bench.seed_bootstrap`); ``leaderboard.md`` lists them in three tables under the first.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from lrvd.errors import first_line
from lrvd_bench.config import DEFAULT_REFERENCE
from lrvd_bench.evaluation_rows import OOD_METRICS, UNCERTAINTY_METRICS, evaluation_rows
from lrvd_bench.table_cells import mean_pm_std
from lrvd_bench.trial_folder import ERROR_FILE, RESULT_FILE, STOPPED_FILE, identity

#: Metrics aggregated as ``<name>_mean`` and ``<name>_std`` over seeds, with higher_is_better.
METRICS: dict[str, bool | None] = {
    "accuracy": True,
    "ece": False,
    "nll": False,
    "brier": False,
    "mcc": True,
    "effective_rank": None,
    "trainable_params": None,
    "variational_params": None,
    "train_time_s": False,
    "time_per_step_s": False,
    "posthoc_time_s": False,
    "eval_time_s": False,
    "peak_memory_mb": False,
    "final_train_loss": False,
    **UNCERTAINTY_METRICS,
    **OOD_METRICS,
}

#: Every leaderboard column and what it means.
COLUMNS: dict[str, str] = {
    "task": "the task the adapters trained on (bench list-tasks)",
    "eval_task": "the task whose evaluation split the row scores: the training task itself, or one of eval_tasks "
    "(the same adapters, posterior and predictive, nothing retrained or refitted)",
    "shift": "id (eval_task = task) or ood (another task: distribution shift)",
    "method": "adapter method (bench list-methods)",
    "model": "backbone alias, hub id or local path",
    "search_point": "search-space values of this row (JSON; empty without a search space)",
    "n_seeds": "successful seeds aggregated in this row",
    "n_failed": "seeds that crashed (see trials.csv for the error)",
    "n_learned": "seeds whose final training NLL (without KL terms) fell below ln(#choices) and whose "
    "accuracy beat the majority class by 2 binomial standard errors",
    "accuracy_mean": "top-1 accuracy on the evaluation split (mean over seeds)",
    "accuracy_std": "standard deviation over seeds (ddof=1)",
    "accuracy_se_eval": "binomial standard error of accuracy_mean from the evaluation-set size: √(p(1−p)/n_eval)",
    "ece_mean": "expected calibration error, 15 equal-width top-label bins, L1 (0-1 scale; papers report ×100)",
    "nll_mean": "mean negative log-likelihood (nats) of the (MC-averaged) predictive probabilities",
    "brier_mean": "multi-class Brier score: mean over examples of Σ_c (p_c − 1[y=c])²",
    "mcc_mean": "Matthews correlation of argmax predictions (CoLA's metric)",
    "effective_rank_mean": "total rank over adapted modules at the end of training (the method's rank_report)",
    "trainable_params_mean": "trainable parameters: adapter + task head (README rule)",
    "variational_params_mean": "extra posterior parameters (e.g. BayesLoRA's per-rank log-variances)",
    "train_time_s_mean": "wall-clock training time (fit only), seconds",
    "time_per_step_s_mean": "train_time_s / optimizer steps",
    "posthoc_time_s_mean": "after_training time (e.g. the Laplace fit), seconds",
    "eval_time_s_mean": "prediction time on the evaluation split (× posterior samples), seconds",
    "peak_memory_mb_mean": "peak CUDA memory allocated, or on CPU the peak RSS above the trial start "
    "(after imports), MiB",
    "final_train_loss_mean": "smoothed training loss at the last step",
    "entropy_mean": "mean predictive entropy H[p̄] (nats) on the evaluation split",
    "expected_entropy_mean": "mean expected entropy over the posterior draws, E_s H[p_s] (aleatoric); equals "
    "entropy for a deterministic predictive; empty for a closed-form predictive (Laplace probit: no draws)",
    "mi_mean": "mean mutual information H[p̄] − E_s H[p_s] (epistemic); 0 for a deterministic predictive, "
    "empty for a closed-form one (see predictive in trials.csv)",
    "aurc_mean": "area under the risk–coverage curve (selective risk of the k most confident, mean over "
    "k = 1..N); lower is better",
    "acc_at_80_mean": "accuracy on the ⌈0.8 N⌉ most confident examples (selective prediction at 80 % coverage)",
    "misclf_auroc_mean": "AUROC of the confidence max p̄ for correct against wrong predictions",
    "ood_auroc_maxprob_mean": "ood rows: AUROC of the score −max p̄ for this evaluation set (positive) against the "
    "training task's evaluation set, per seed; ood_auroc_entropy / ood_auroc_mi: scored by H[p̄] / MI",
    "ood_fpr95_maxprob_mean": "ood rows: fraction of this set accepted as in-distribution at the threshold that "
    "keeps 95 % of the in-distribution set (FPR at 95 % TPR); _entropy / _mi likewise",
    "reference": "the method the delta_* columns compare with (config key reference, default lora)",
    "delta_accuracy": "paired difference method − reference in accuracy: mean over the seeds both ran of the "
    "per-seed difference on the same evaluation questions (a one-trial row such as lora-ensemble: against the "
    "reference's seed mean, see delta_pairing); empty on the reference's own row",
    "delta_accuracy_lo": "lower end of the seed-aware 95 % interval of delta_accuracy: two-level bootstrap "
    "(seeds resampled with one draw for every method, then questions; seed level t-calibrated; "
    "docs/statistics.md); empty with one seed",
    "delta_accuracy_hi": "upper end of that interval",
    "delta_accuracy_p": "two-sided p of delta_accuracy: the smallest α whose seed-aware interval excludes 0",
    "delta_accuracy_p_holm": "delta_accuracy_p Holm-adjusted over every seed-aware test of the task's table "
    "(delta_family tests)",
    "delta_accuracy_significant": "delta_accuracy_p_holm < 0.05: marked * in leaderboard.md; the only sense in "
    "which a difference is called significant",
    "delta_accuracy_mc_se": "largest Monte-Carlo standard error of the metric's interval ends (target < 0.001)",
    "delta_accuracy_questions_lo": "lower end of the question-only 95 % interval (questions resampled, these "
    "seeds' runs held fixed: conditional on these seeds, not a test of the methods; ECE: BCa)",
    "delta_accuracy_questions_hi": "upper end of the question-only interval",
    "delta_accuracy_per_seed": "per-seed differences, ';'-separated in seed order",
    "delta_accuracy_better_seeds": "seeds at which the method is better than the reference",
    "poi_accuracy": "probability of improvement: share of (method seed, reference seed) pairs where the method "
    "is better, ties ½ (rliable's statistic); poi_accuracy_lo / _hi its 95 % bootstrap interval",
    "delta_ece": "paired difference in ECE (negative: better calibrated); every delta_accuracy_* / poi_accuracy* "
    "column exists for ece, nll and brier too (seed-aware ECE interval bias-corrected)",
    "delta_nll": "paired difference in NLL (negative: better)",
    "delta_brier": "paired difference in Brier score (negative: better)",
    "delta_n_seeds": "seeds in the delta_* columns: those both the method and the reference completed, or the "
    "reference's seeds for a one-trial row",
    "delta_pairing": "'per seed', or 'reference seed mean' for a one-trial row (lora-ensemble) compared with "
    "the reference's seed mean",
    "delta_resamples": "bootstrap resamples behind the row's intervals (doubled from 10000 until every interval "
    "end's Monte-Carlo standard error < 0.001 and no * decision is within 3 of them of the threshold; at most "
    "160000)",
    "delta_family": "number of tests in the Holm family of the row's table: its training task and evaluation "
    "task (rows × 4 metrics)",
    "delta_unclear": "* decisions of the run whose Holm-adjusted p lies within 3 Monte-Carlo standard errors of "
    "0.05 at the resamples used (resamples are doubled while any does, up to 160000)",
    "n_eval": "evaluation examples (the task's evaluation split, after limit_eval)",
    "n_train": "examples the methods trained on: the training split (after limit_train) minus the validation split",
    "n_val": "validation examples: validation_fraction of the training split, held out once per sweep (split_seed) "
    "and shared by every method (temperature scaling, Laplace grid search, checkpoint and "
    "hyper-parameter selection); never part of n_train or n_eval",
}

TRIAL_COLUMNS = [
    "trial_id",
    "method",
    "task",
    "model",
    "seed",
    "status",
    "error",
    "accuracy",
    "ece",
    "nll",
    "brier",
    "mcc",
    "learned",
    "final_train_loss",
    "final_train_nll",
    "uniform_loss",
    "majority_accuracy",
    "effective_rank",
    "trainable_params",
    "variational_params",
    "steps",
    "best_step",
    "train_time_s",
    "time_per_step_s",
    "posthoc_time_s",
    "eval_time_s",
    "peak_memory_mb",
    "n_train",
    "n_val",
    "n_eval",
    "n_samples",
    "split_note",
    "data_source",
    "device",
    "device_name",
    "node",
    "hostname",
    "gpu_ids",
    "node_id",
    "config_hash",
    "search_point",
    "rank_per_module",
    "versions",
    "wall_time_s",
]
"""Columns of ``trials.csv`` in order (one row per trial; dict-valued fields as JSON strings)."""


# -- gathering -----------------------------------------------------------------------------------
def gather_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per trial: ``result.json`` (ok), ``error.json`` (failed), else ``incomplete`` / ``not run``."""
    from lrvd_bench.config import TrialSpec, read_yaml

    run_dir = Path(run_dir)
    rows: list[dict[str, Any]] = []
    seen = set()
    trials = run_dir / "trials"
    for folder in sorted(trials.iterdir()) if trials.is_dir() else []:
        if not folder.is_dir():
            continue
        seen.add(folder.name)
        # result.json (ok), error.json (failed), stopped.json (stopped by the scheduler, lrvd_bench.sweep.progress)
        stored = (read_row(folder / name) for name in (RESULT_FILE, ERROR_FILE, STOPPED_FILE))
        row = next((r for r in stored if r is not None), None)
        if row is not None:
            rows.append(row)
        else:
            spec_file = folder / "spec.json"
            spec = TrialSpec.from_dict(json.loads(spec_file.read_text())) if spec_file.is_file() else None
            rows.append(
                {
                    **(identity(spec) if spec else {"trial_id": folder.name}),
                    "status": "incomplete",
                    "error": "trial started but did not finish",
                }
            )
    specs_file, config_file = run_dir / "specs.json", run_dir / "config.yaml"
    sampled = config_file.is_file() and any(
        "grid_search" not in v for v in (read_yaml(config_file).get("search_space") or {}).values()
    )
    if specs_file.is_file() and not sampled:  # with random search the trial ids are only known once sampled
        for data in json.loads(specs_file.read_text()):
            spec = TrialSpec.from_dict(data)
            if spec.trial_id not in seen:
                rows.append({**identity(spec), "status": "not run", "error": ""})
    return rows


def read_row(path: Path) -> dict[str, Any] | None:
    """The trial row stored in ``path``; None when there is none, and with a warning naming the file
    when it is truncated or corrupt: the trial then counts as unfinished, which ``--resume`` re-runs."""
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = first_line(err)
        print(f"bench: warning: skipped unreadable {path} ({reason})", file=sys.stderr)
        return None
    if not isinstance(row, dict):
        print(f"bench: warning: skipped {path} (a JSON {type(row).__name__}, not a trial row)", file=sys.stderr)
        return None
    return row


def rows_frame(rows: list[dict[str, Any]]):
    """trials.csv as a DataFrame: :data:`TRIAL_COLUMNS` first, dict values as JSON strings."""
    import pandas as pd

    flat = [
        {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows
    ]
    frame = pd.DataFrame(flat)
    for column in TRIAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    extra = [c for c in frame.columns if c not in TRIAL_COLUMNS]
    return frame[TRIAL_COLUMNS + extra]


# -- aggregation ---------------------------------------------------------------------------------
def build_leaderboard(
    rows: list[dict[str, Any]], run_dir: str | Path | None = None, reference: str = DEFAULT_REFERENCE
):
    """One row per task × method × model (× search point): mean ± std over successful seeds, and
    with ``run_dir`` (the trials' ``predictions.npz``) each row's paired differences from ``reference``.

    Sorted by task, then accuracy (descending), then method name.
    """
    import pandas as pd

    frame = rows_frame(evaluation_rows(rows, run_dir)) if rows else rows_frame([])
    frame["search_point"] = frame["search_point"].fillna("").astype(str)
    frame["model"] = frame["model"].fillna("").astype(str)
    if "eval_task" not in frame.columns:
        frame["eval_task"] = frame["task"]
        frame["shift"] = "id"
    for metric in METRICS:  # the uncertainty columns exist only where predictions were saved
        if metric not in frame.columns:
            frame[metric] = math.nan
    keys = ["task", "eval_task", "shift", "method", "model", "search_point"]
    out = []
    for key, group in frame.dropna(subset=["task", "method"]).groupby(keys, sort=True, dropna=False):
        ok = group[group["status"] == "ok"]
        record: dict[str, Any] = dict(zip(keys, key))
        record["n_seeds"] = len(ok)
        record["n_failed"] = int((group["status"] == "failed").sum())
        record["n_learned"] = int(ok["learned"].map(lambda v: v is True or v == "True" or v == 1).sum())
        for metric in METRICS:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna()
            record[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            record[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        n_eval = pd.to_numeric(ok["n_eval"], errors="coerce").dropna()
        record["n_eval"] = int(n_eval.iloc[0]) if len(n_eval) else 0
        for size in ("n_train", "n_val"):
            values = pd.to_numeric(ok[size], errors="coerce").dropna()
            record[size] = int(values.iloc[0]) if len(values) else 0
        p = record["accuracy_mean"]
        record["accuracy_se_eval"] = math.sqrt(p * (1 - p) / record["n_eval"]) if record["n_eval"] else math.nan
        out.append(record)
    columns = keys + ["n_seeds", "n_failed", "n_learned", "accuracy_mean", "accuracy_std", "accuracy_se_eval"]
    columns += [c for m in METRICS for c in (f"{m}_mean", f"{m}_std") if c not in columns]
    columns += ["n_eval", "n_train", "n_val"]
    board = pd.DataFrame(out, columns=columns)
    from lrvd_bench.paired_table import add_paired_deltas

    board = add_paired_deltas(board, frame, run_dir, reference)
    if not board.empty:
        id_first = board["shift"] != "id"
        board = (
            board.assign(_ood=id_first)
            .sort_values(
                ["task", "_ood", "eval_task", "accuracy_mean", "method"],
                ascending=[True, True, True, False, True],
                na_position="last",
            )
            .drop(columns="_ood")
            .reset_index(drop=True)
        )
    if not (board["search_point"] != "").any():
        board = board.drop(columns=["search_point"])
    return board


MARKDOWN_COLUMNS = [
    ("accuracy", "acc", 3),
    ("ece", "ECE", 3),
    ("nll", "NLL", 3),
    ("brier", "Brier", 3),
    ("mcc", "MCC", 3),
    ("effective_rank", "eff. rank", 1),
    ("trainable_params", "trainable", 0),
    ("train_time_s", "train s", 1),
    ("eval_time_s", "eval s", 1),
    ("peak_memory_mb", "peak MiB", 0),
]


def to_markdown(board) -> str:
    """A GitHub-flavoured table: mean ± std per metric and accuracy's standard error; ``†`` marks rows
    with seeds that did not learn. Below it, the paired differences from the reference method."""
    from lrvd_bench.paired_table import paired_markdown, table_label

    shifted = any(table_label(r) != r["task"] for _, r in board.iterrows())
    header = ["task → evaluated on" if shifted else "task", "method"]
    header += (["search point"] if "search_point" in board.columns else []) + ["seeds"]
    header += [label for _, label, _ in MARKDOWN_COLUMNS]
    header.insert(header.index("acc") + 1, "acc SE")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in board.iterrows():
        seeds = f"{row['n_seeds']}"
        if row["n_learned"] < row["n_seeds"]:
            seeds += f" ({row['n_seeds'] - row['n_learned']} †)"
        if row["n_failed"]:
            seeds += f" +{row['n_failed']} failed"
        cells = [table_label(row), row["method"]] + ([row["search_point"]] if "search_point" in board.columns else [])
        cells.append(seeds)
        cells += [mean_pm_std(row[f"{m}_mean"], row[f"{m}_std"], d) for m, _, d in MARKDOWN_COLUMNS]
        cells.insert(header.index("acc SE"), mean_pm_std(row.get("accuracy_se_eval", math.nan), None, 3))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [
        "",
        "Mean ± std over seeds (ddof=1). acc SE = binomial standard error of the accuracy from the "
        "evaluation-set size, √(p(1−p)/n_eval). † = seeds that did not learn: final training NLL (the KL "
        "terms of BayesLoRA and BLoB left out) ≥ ln(#choices), or accuracy not above the majority "
        "class m by 2 standard errors, m + 2·√(m(1−m)/n_eval). ECE: 15 bins, 0-1 scale.",
    ]
    notes += [
        f"Rows per stage, {table}: {n_train} training / {n_val} validation / {n_eval} evaluation."
        for table, n_train, n_val, n_eval in _stage_sizes(board)
    ]
    from lrvd_bench.shift_table import shift_markdown

    tables = lines + notes + shift_markdown(board) + uncertainty_markdown(board) + paired_markdown(board)
    return "\n".join(tables) + "\n"


#: The uncertainty table's columns: (metric, label, digits); OOD columns are filled on ood rows only.
UNCERTAINTY_COLUMNS = [
    ("entropy", "entropy", 3),
    ("mi", "MI", 4),
    ("aurc", "AURC", 3),
    ("acc_at_80", "acc@80%", 3),
    ("misclf_auroc", "misclf AUROC", 3),
    ("ood_auroc_maxprob", "OOD AUROC maxprob", 3),
    ("ood_auroc_entropy", "OOD AUROC entropy", 3),
    ("ood_auroc_mi", "OOD AUROC MI", 3),
    ("ood_fpr95_entropy", "FPR95 entropy", 3),
]


def uncertainty_markdown(board) -> list[str]:
    """Uncertainty judged by what it is for (lines led by a blank line; empty when no row has the columns)."""
    from lrvd_bench.paired_table import table_label

    if "aurc_mean" not in board.columns or board["aurc_mean"].isna().all():
        return []
    shifted = "shift" in board.columns and (board["shift"] == "ood").any()
    columns = [c for c in UNCERTAINTY_COLUMNS if shifted or not c[0].startswith("ood_")]
    header = ["task → evaluated on" if shifted else "task", "method", "seeds"] + [label for _, label, _ in columns]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in board.iterrows():
        cells = [table_label(row), row["method"], str(row["n_seeds"])]
        cells += [mean_pm_std(row.get(f"{m}_mean", math.nan), row.get(f"{m}_std", math.nan), d) for m, _, d in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± std over seeds. Entropy and MI (mutual information, epistemic) in nats: MI 0 for a deterministic "
        "predictive, – for a closed-form one (Laplace probit: no posterior draws). AURC: area under the "
        "risk–coverage curve (lower is better); acc@80%: accuracy on the 80 % most confident questions; misclf "
        "AUROC: confidence separating correct from wrong answers."
        + (
            " OOD AUROC / FPR95 (rows evaluated on another task): that set against the training task's evaluation "
            "set, scored by −max p, entropy or MI (AUROC 0.5 = no detection; FPR95: share of OOD questions kept at "
            "95 % in-distribution recall)."
            if shifted
            else ""
        ),
    ]
    return lines


def _stage_sizes(board) -> list[tuple[str, int, int, int]]:
    """(task, n_train, n_val, n_eval) per distinct combination (one per task unless limit_train is searched)."""
    from lrvd_bench.paired_table import table_label

    columns = ["task", "n_train", "n_val", "n_eval"]
    if board.empty or any(c not in board.columns for c in columns):
        return []
    sizes = board.assign(table=board.apply(table_label, axis=1))[["table", "n_train", "n_val", "n_eval"]]
    return [(r.table, int(r.n_train), int(r.n_val), int(r.n_eval)) for r in sizes.drop_duplicates().itertuples()]


def run_reference(run_dir: str | Path) -> str:
    """The run's ``reference`` method (its ``config.yaml``), else :data:`DEFAULT_REFERENCE`."""
    from lrvd_bench.config import read_yaml

    config = Path(run_dir) / "config.yaml"
    return str((read_yaml(config) if config.is_file() else {}).get("reference") or DEFAULT_REFERENCE)


def write_leaderboard(
    rows: list[dict[str, Any]],
    run_dir: str | Path,
    csv_path: str | Path | None = None,
    md_path: str | Path | None = None,
    reference: str | None = None,
):
    """Write ``leaderboard.csv`` and ``leaderboard.md`` (atomically) and return the DataFrame.

    ``reference`` (default: the run's config, else ``lora``) is the method the paired differences
    are taken from.
    """
    run_dir = Path(run_dir)
    board = build_leaderboard(rows, run_dir, reference or run_reference(run_dir))
    csv_path = Path(csv_path) if csv_path else run_dir / "leaderboard.csv"
    md_path = Path(md_path) if md_path else csv_path.with_suffix(".md")
    for path, write in (
        (csv_path, lambda p: board.to_csv(p, index=False)),
        (md_path, lambda p: Path(p).write_text(to_markdown(board))),
    ):
        tmp = path.with_name(path.name + ".tmp")
        write(tmp)
        os.replace(tmp, path)
    return board


def columns_markdown() -> str:
    """The column table for the README."""
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in COLUMNS.items()]
    lines.append("| `<metric>_std` | standard deviation over seeds of the matching `_mean` column (ddof=1) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(columns_markdown(), end="")
