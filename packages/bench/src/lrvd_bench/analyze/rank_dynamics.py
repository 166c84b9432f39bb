"""Rank dynamics: active rank per layer × step and per module type × step; effective rank over training.

Input: every trial's ``ranks.csv`` (step, module, rank — BayesLoRA: #{k : log α_k < τ}; AdaLoRA and
AdaLoRA-IVON: the allocated rank). Heatmaps are drawn for methods whose rank is adaptive (those that
declare the ``adaptive_rank`` capability, or any method whose rank changes in some trial), averaged
over seeds; the effective-rank curve (sum over modules) is drawn for every method, mean ± std across
seeds, one panel per method.

Outputs (``out/rank_dynamics``): ``rank_by_layer.csv``, ``rank_by_type.csv`` (method, task, seed,
step, layer|type, rank), ``effective_rank.csv`` (method, task, step, mean, std, n_seeds),
``heatmap_layer_<method>_<task>.png``, ``heatmap_type_<method>_<task>.png``,
``effective_rank_<task>.png``; from BayesLoRA's ``log_alpha.csv`` (when trials have it):
``log_alpha_quantiles.csv`` (method, task, seed, step, q10, q50, q90 of per-rank log α over all
modules) and ``log_alpha_<method>_<task>.png`` (median and 10–90% band per seed).
"""

from __future__ import annotations

from pathlib import Path

from lrvd.registry import method_capability
from lrvd_bench.analyze.common import SkipAnalysis, Trial, layer_index, module_type, write_csv
from lrvd_bench.figures import pyplot, rank_curve_grid, safe, save_figure

TYPE_ORDER = ("q", "k", "v", "o", "mlp", "other")


def load_ranks(trials: list[Trial]):
    import pandas as pd

    frames = []
    for t in trials:
        file = t.path / "ranks.csv"
        if not file.exists():
            continue
        frame = pd.read_csv(file)
        if frame.empty or not {"step", "module", "rank"} <= set(frame.columns):
            continue
        # the last record of a step wins (trial.py may log the final step twice)
        frame = frame.drop_duplicates(["step", "module"], keep="last")
        frame = frame.assign(method=t.method, task=t.task, seed=t.seed)
        frames.append(frame)
    if not frames:
        raise SkipAnalysis("no ranks.csv in any trial")
    ranks = pd.concat(frames, ignore_index=True)
    ranks["layer"] = ranks["module"].map(layer_index)
    ranks["type"] = ranks["module"].map(module_type)
    return ranks


def aggregate(ranks):
    """(by_layer, by_type, effective): sums per (method, task, seed, step, group) and mean ± std of the total."""
    keys = ["method", "task", "seed", "step"]
    by_layer = ranks.groupby([*keys, "layer"], as_index=False)["rank"].sum()
    by_type = ranks.groupby([*keys, "type"], as_index=False)["rank"].sum()
    total = ranks.groupby(keys, as_index=False)["rank"].sum()
    effective = total.groupby(["method", "task", "step"])["rank"].agg(["mean", "std", "count"]).reset_index()
    effective = effective.rename(columns={"count": "n_seeds"}).fillna({"std": 0.0})
    return by_layer, by_type, effective


def _heatmap(table, title: str, ylabel: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * table.shape[1] + 2), max(2.5, 0.35 * table.shape[0] + 1.5)))
    im = ax.imshow(table.to_numpy(dtype=float), aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
    steps = list(table.columns)
    ticks = sorted(set(range(0, len(steps), max(1, len(steps) // 8))) | {len(steps) - 1})
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="active rank (mean over seeds)")
    return save_figure(fig, path)


def run(trials: list[Trial], out: Path) -> list[Path]:
    ranks = load_ranks(trials)
    out.mkdir(parents=True, exist_ok=True)
    by_layer, by_type, effective = aggregate(ranks)
    files = [
        write_csv(by_layer, out / "rank_by_layer.csv"),
        write_csv(by_type, out / "rank_by_type.csv"),
        write_csv(effective, out / "effective_rank.csv"),
    ]
    changing = set(
        ranks.groupby(["method", "task", "seed", "module"])["rank"]
        .nunique()
        .loc[lambda s: s > 1]
        .index.get_level_values("method")
    )
    for (method, task), group in by_layer.groupby(["method", "task"]):
        if method not in changing and not method_capability(method, "adaptive_rank"):
            continue
        table = group.groupby(["layer", "step"])["rank"].mean().unstack("step").sort_index()
        files.append(
            _heatmap(
                table,
                f"{method} on {task}: active rank per layer",
                "layer",
                out / f"heatmap_layer_{safe(method)}_{safe(task)}.png",
            )
        )
        sub = by_type[(by_type.method == method) & (by_type.task == task)]
        table = sub.groupby(["type", "step"])["rank"].mean().unstack("step")
        table = table.reindex([t for t in TYPE_ORDER if t in table.index])
        files.append(
            _heatmap(
                table,
                f"{method} on {task}: active rank per module type",
                "module type",
                out / f"heatmap_type_{safe(method)}_{safe(task)}.png",
            )
        )
    files += _log_alpha(trials, out)
    for task, group in effective.groupby("task"):
        curves = {method: g for method, g in group.groupby("method")}
        fig = rank_curve_grid(curves, f"{task}: effective rank (sum over modules), mean ± std over seeds")
        files.append(save_figure(fig, out / f"effective_rank_{safe(task)}.png"))
    return files


def _log_alpha(trials: list[Trial], out: Path) -> list[Path]:
    import pandas as pd

    rows = []
    for t in trials:
        file = t.path / "log_alpha.csv"
        if not file.exists():
            continue
        frame = pd.read_csv(file).drop_duplicates(["step", "module", "rank_index"], keep="last")
        for step, g in frame.groupby("step"):
            q = g["log_alpha"].quantile([0.1, 0.5, 0.9]).to_numpy()
            rows.append(
                {
                    "method": t.method,
                    "task": t.task,
                    "seed": t.seed,
                    "step": step,
                    "q10": q[0],
                    "q50": q[1],
                    "q90": q[2],
                }
            )
    if not rows:
        return []
    table = pd.DataFrame(rows)
    files = [write_csv(table, out / "log_alpha_quantiles.csv")]
    plt = pyplot()
    for (method, task), g in table.groupby(["method", "task"]):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for seed, h in g.groupby("seed"):
            h = h.sort_values("step")
            ax.plot(h["step"], h["q50"], label=f"seed {seed}")
            ax.fill_between(h["step"], h["q10"], h["q90"], alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel("per-rank log α (median, 10–90%)")
        ax.set_title(f"{method} on {task}", fontsize=9)
        ax.legend(fontsize=7)
        files.append(save_figure(fig, out / f"log_alpha_{safe(method)}_{safe(task)}.png"))
    return files
