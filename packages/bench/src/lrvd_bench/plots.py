"""Figures of a run, from its trial folders (matplotlib, Agg backend; saved under ``runs/NAME/figures``).

- ``reliability_<task>.png``: one reliability diagram per method, at most 3 per row, each over a strip
  of its per-bin counts (predictions of all seeds pooled; bins from
  :func:`lrvd.metrics.calibration_bins`, the same bins as the ECE column); the title gives the pooled
  predictions' ECE and, with several seeds, the table's (the mean of the per-seed ECEs) beside it;
- ``accuracy_vs_ece_<task>.png``: one point per seed, method means with ±1 std bars;
- ``effective_rank_<task>.png``: total rank over training steps (sum over modules of ``ranks.csv``),
  one panel per method (at most 3 per row, shared axes), mean ± std over seeds;
- ``paired_differences_<task>.png``: a forest plot, one panel per metric (accuracy, ECE, NLL, Brier),
  each method's paired difference from the reference with its seed-aware 95 % interval (the leaderboard's
  ``delta_*`` columns, :mod:`lrvd_bench.paired_table`); filled markers where the difference is
  significant (Holm-adjusted, ``delta_<metric>_significant``);
- the selective-prediction and distribution-shift figures of :mod:`lrvd_bench.shift_plots`
  (``risk_coverage_*``, ``ood_histograms_*``, ``shift_*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrvd_bench.figures import pyplot, rank_curve_grid, reliability_grid, safe, save_figure
from lrvd_bench.shift_plots import shift_figures
from lrvd_bench.table_cells import significant

N_BINS = 15


def _ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _by_task(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["task"], []).append(row)
    return out


def reliability_title(method: str, pooled_ece: float, seed_eces: list[float], n: int) -> str:
    """The panel title: the ECE of the pooled predictions the bars show and, when several seeds are
    pooled, the leaderboard's ECE (the mean of the per-seed ECEs), labelled apart: the two differ."""
    if len(seed_eces) <= 1:
        return f"{method}\nECE {pooled_ece:.3f}, n={n}"
    mean = sum(seed_eces) / len(seed_eces)
    return f"{method}\nECE {pooled_ece:.3f} pooled (n={n});\ntable: {mean:.3f}, mean of {len(seed_eces)} seeds"


def reliability_diagrams(run_dir: Path, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import numpy as np
    import torch

    from lrvd.metrics import expected_calibration_error

    paths = []
    for task, task_rows in _by_task(_ok_rows(rows)).items():
        parts: dict[str, tuple[list[Any], list[Any]]] = {}
        for row in task_rows:
            file = run_dir / "trials" / row["trial_id"] / "predictions.npz"
            if file.is_file():
                data = np.load(file)
                probs, labels = parts.setdefault(row["method"], ([], []))
                probs.append(data["probs"])
                labels.append(data["labels"])
        if not parts:
            continue
        pooled = {m: (np.concatenate(parts[m][0]), np.concatenate(parts[m][1])) for m in sorted(parts)}
        titles = {}
        for m, (p, y) in pooled.items():
            seed_eces = [float(r["ece"]) for r in task_rows if r["method"] == m and r.get("ece") is not None]
            pooled_ece = float(expected_calibration_error(torch.as_tensor(p), torch.as_tensor(y), N_BINS))
            titles[m] = reliability_title(m, pooled_ece, seed_eces, len(y))
        fig = reliability_grid(
            pooled,
            titles,
            f"Reliability, {task} (seeds pooled; bars: accuracy per confidence bin, strip: examples per bin)",
            N_BINS,
        )
        paths.append(save_figure(fig, out_dir / f"reliability_{safe(task)}.png"))
    return paths


def accuracy_vs_ece(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import numpy as np

    plt = pyplot()
    paths = []
    for task, task_rows in _by_task(_ok_rows(rows)).items():
        fig, ax = plt.subplots(figsize=(5, 4))
        methods = sorted({r["method"] for r in task_rows})
        for i, method in enumerate(methods):
            pts = np.array([(r["ece"], r["accuracy"]) for r in task_rows if r["method"] == method], dtype=float)
            color = f"C{i % 10}"
            ax.scatter(pts[:, 0], pts[:, 1], color=color, alpha=0.4, s=18)
            std = pts.std(0, ddof=1) if len(pts) > 1 else np.zeros(2)
            ax.errorbar(
                pts[:, 0].mean(),
                pts[:, 1].mean(),
                xerr=std[0],
                yerr=std[1],
                fmt="o",
                color=color,
                capsize=3,
                label=method,
            )
        ax.set_xlabel("ECE (lower is better)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Accuracy vs calibration, {task}", fontsize=10)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir / f"accuracy_vs_ece_{safe(task)}.png"))
    return paths


def effective_rank_curves(run_dir: Path, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import pandas as pd

    paths = []
    for task, task_rows in _by_task(_ok_rows(rows)).items():
        totals: dict[str, list[Any]] = {}
        for row in task_rows:
            file = run_dir / "trials" / row["trial_id"] / "ranks.csv"
            if not file.is_file():
                continue
            ranks = pd.read_csv(file)
            if ranks.empty:
                continue
            ranks = ranks.drop_duplicates(["step", "module"], keep="last")
            totals.setdefault(row["method"], []).append(ranks.groupby("step")["rank"].sum())
        if not totals:
            continue
        curves = {}
        for method, series in sorted(totals.items()):
            seeds = pd.concat(series, axis=1)
            curves[method] = pd.DataFrame(
                {
                    "step": seeds.index,
                    "mean": seeds.mean(axis=1).to_numpy(),
                    "std": seeds.std(axis=1).fillna(0.0).to_numpy(),
                    "n_seeds": seeds.notna().sum(axis=1).to_numpy(),
                }
            )
        fig = rank_curve_grid(
            curves, f"Effective rank (sum over modules) during training, {task}: mean ± std over seeds"
        )
        paths.append(save_figure(fig, out_dir / f"effective_rank_{safe(task)}.png"))
    return paths


def paired_forest(board: Any, out_dir: Path) -> list[Path]:
    """Forest plot of the ``delta_*`` columns per table (training task, and evaluation task under shift):
    methods down, Δ with its interval across."""
    import math

    from lrvd_bench.paired import PAIRED_METRICS

    if "delta_accuracy" not in board.columns:
        return []
    plt = pyplot()
    labels = {
        "accuracy": "Δ accuracy (higher is better)",
        "ece": "Δ ECE (lower is better)",
        "nll": "Δ NLL (lower is better)",
        "brier": "Δ Brier (lower is better)",
    }
    from lrvd_bench.paired_table import table_label

    paths = []
    tables = board.apply(table_label, axis=1) if len(board) else board.get("task")
    for task, group in board.groupby(tables, sort=False):
        group = group[group["delta_accuracy"].notna()]
        if group.empty:
            continue
        points = group["search_point"] if "search_point" in group.columns else [""] * len(group)
        names = [f"{m} {sp}" if isinstance(sp, str) and sp else m for m, sp in zip(group["method"], points)]
        reference = group["reference"].iloc[0]
        fig, axes = plt.subplots(
            1,
            len(PAIRED_METRICS),
            figsize=(3.3 * len(PAIRED_METRICS), 0.45 * len(group) + 1.6),
            sharey=True,
            squeeze=False,
        )
        y = list(range(len(group)))[::-1]
        for ax, metric in zip(axes[0], PAIRED_METRICS):
            for yi, (_, row) in zip(y, group.iterrows()):
                delta, lo, hi = row[f"delta_{metric}"], row[f"delta_{metric}_lo"], row[f"delta_{metric}_hi"]
                if math.isnan(delta):
                    continue
                if math.isnan(lo):  # one seed: no seed-aware interval
                    lo = hi = delta
                excludes = significant(row, metric)
                ax.errorbar(
                    delta,
                    yi,
                    xerr=[[delta - lo], [hi - delta]],
                    fmt="o",
                    capsize=3,
                    color="C0",
                    markerfacecolor="C0" if excludes else "white",
                )
            ax.axvline(0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel(labels[metric], fontsize=8)
        axes[0][0].set_yticks(y)
        axes[0][0].set_yticklabels(names, fontsize=8)
        fig.suptitle(
            f"Paired differences from {reference}, {task} (seed-aware 95 % interval; filled: significant after Holm)",
            fontsize=9,
        )
        name = safe(str(task).replace(" → ", "_"))
        paths.append(save_figure(fig, out_dir / f"paired_differences_{name}.png"))
    return paths


def make_figures(run_dir: str | Path, rows: list[dict[str, Any]] | None = None, board: Any = None) -> list[Path]:
    """Write all figures of ``run_dir`` into ``run_dir/figures``; returns the files written.

    ``board`` is the leaderboard the forest plot draws; by default ``run_dir/leaderboard.csv`` (written
    just before by the sweep and by ``bench leaderboard``), else none is drawn.
    """
    import pandas as pd

    from lrvd_bench.leaderboard import gather_rows

    run_dir = Path(run_dir)
    rows = gather_rows(run_dir) if rows is None else rows
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    if board is None and (run_dir / "leaderboard.csv").is_file():
        board = pd.read_csv(run_dir / "leaderboard.csv")
    return (
        reliability_diagrams(run_dir, rows, out_dir)
        + accuracy_vs_ece(rows, out_dir)
        + effective_rank_curves(run_dir, rows, out_dir)
        + (paired_forest(board, out_dir) if board is not None else [])
        + shift_figures(run_dir, rows, board)
    )
