"""Calibration: reliability diagrams, confidence histograms and ECE with a bootstrap confidence interval.

Input: every trial's ``predictions.npz`` (probs [N, C], labels [N]). ECE is the leaderboard's
(:func:`lrvd.metrics.expected_calibration_error`: top-label confidence, 15 equal-width bins, L1); its
CI is scipy's percentile bootstrap (:func:`scipy.stats.bootstrap`) over B (default 1000) resamples
of the evaluation examples, seeded (``seed``) so reruns give the same numbers. Binned ECE is biased
upward (resampling adds noise to every bin's |acc − conf|), so for a well-calibrated model with small
N the interval can lie entirely above the point estimate; it is reported as is (not widened to
contain the point), with the bootstrap mean beside it (``boot_mean`` − ``ece`` estimates the bias).

Outputs (``out/calibration``): ``ece_bootstrap.csv`` (method, task, seed, n, ece, ci_low, ci_high,
rows with seed "pooled" pool all seeds of a method), ``reliability_bins.csv`` (pooled per method and
task: bin, lo, hi, count, confidence, accuracy), ``reliability_<task>.png`` (a reliability diagram
over a strip of per-bin counts per method, at most 3 per row).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrvd_bench.analyze.common import SkipAnalysis, Trial, write_csv
from lrvd_bench.figures import reliability_grid, safe, save_figure

N_BINS = 15
N_BOOT = 1000


def _tensors(probs, labels):
    import torch

    return torch.as_tensor(np.asarray(probs, dtype=np.float64)), torch.as_tensor(np.asarray(labels).astype(np.int64))


def reliability_bins(probs, labels, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per bin: count, mean confidence, accuracy (0 in empty bins), from :func:`lrvd.metrics.calibration_bins`."""
    from lrvd.metrics import calibration_bins

    count, confidence, accuracy = calibration_bins(*_tensors(probs, labels), n_bins)
    return {"count": count.numpy(), "confidence": confidence.numpy(), "accuracy": accuracy.numpy()}


def ece_bootstrap(
    probs,
    labels,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
    n_bins: int = N_BINS,
    return_mean: bool = False,
) -> tuple[float, ...]:
    """(ECE, CI low, CI high[, bootstrap mean]): scipy's percentile interval over ``n_boot`` resamples."""
    from scipy.stats import bootstrap

    from lrvd.metrics import expected_calibration_error

    probs, labels = _tensors(probs, labels)
    n = len(labels)
    if n == 0:
        return (float("nan"),) * (4 if return_mean else 3)
    point = expected_calibration_error(probs, labels, n_bins)

    def resampled_ece(idx: np.ndarray) -> float:
        return expected_calibration_error(probs[idx], labels[idx], n_bins)

    res = bootstrap(
        (np.arange(n),),
        resampled_ece,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    mean = float(np.mean(res.bootstrap_distribution))
    return (point, lo, hi, mean) if return_mean else (point, lo, hi)


def run(trials: list[Trial], out: Path, n_boot: int = N_BOOT, seed: int = 0) -> list[Path]:
    import pandas as pd

    preds: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for t in trials:
        file = t.path / "predictions.npz"
        if not file.exists():
            continue
        with np.load(file) as data:
            preds.setdefault((t.task, t.method), []).append((t.seed, data["probs"], data["labels"]))
    if not preds:
        raise SkipAnalysis("no predictions.npz in any trial")
    out.mkdir(parents=True, exist_ok=True)
    rows, bins_rows = [], []
    pooled: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for (task, method), items in sorted(preds.items()):
        for s, probs, labels in sorted(items, key=lambda x: x[0]):
            point, lo, hi, mean = ece_bootstrap(probs, labels, n_boot, seed=seed, return_mean=True)
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "seed": s,
                    "n": len(labels),
                    "ece": point,
                    "ci_low": lo,
                    "ci_high": hi,
                    "boot_mean": mean,
                }
            )
        width = max(p.shape[1] for _, p, _ in items)  # pad missing choices with probability 0
        probs = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for _, p, _ in items])
        labels = np.concatenate([y for _, _, y in items])
        pooled[(task, method)] = (probs, labels)
        point, lo, hi, mean = ece_bootstrap(probs, labels, n_boot, seed=seed, return_mean=True)
        rows.append(
            {
                "method": method,
                "task": task,
                "seed": "pooled",
                "n": len(labels),
                "ece": point,
                "ci_low": lo,
                "ci_high": hi,
                "boot_mean": mean,
            }
        )
        b = reliability_bins(probs, labels)
        for i in range(N_BINS):
            bins_rows.append(
                {
                    "method": method,
                    "task": task,
                    "bin": i,
                    "lo": i / N_BINS,
                    "hi": (i + 1) / N_BINS,
                    "count": int(b["count"][i]),
                    "confidence": b["confidence"][i],
                    "accuracy": b["accuracy"][i],
                }
            )
    files = [
        write_csv(pd.DataFrame(rows), out / "ece_bootstrap.csv"),
        write_csv(pd.DataFrame(bins_rows), out / "reliability_bins.csv"),
    ]
    ece_rows = {(r["task"], r["method"]): r for r in rows if r["seed"] == "pooled"}
    for task in sorted({t for t, _ in pooled}):
        methods = sorted(m for t, m in pooled if t == task)
        titles = {
            m: f"{m}\nECE {r['ece']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}], n={r['n']}"
            for m in methods
            for r in [ece_rows[(task, m)]]
        }
        fig = reliability_grid(
            {m: pooled[(task, m)] for m in methods},
            titles,
            f"{task}: reliability (all seeds pooled, 95% bootstrap CI; strip: examples per bin)",
            N_BINS,
        )
        files.append(save_figure(fig, out / f"reliability_{safe(task)}.png"))
    return files
