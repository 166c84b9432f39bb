"""τ sweep: prune BayesLoRA ranks at thresholds τ after training and evaluate without retraining.

For each τ in the grid, rank components with log α_k ≥ τ are switched off (their row of A_mu is
zeroed, which removes exactly s·B_k A_k from the mean model, the same function as physical pruning
with :func:`lrvd.pruning.prune_ranks`); log α is taken from the *unpruned* trained adapter, so the
sets are nested. Prediction uses the **posterior mean** (``n_samples = 0``) to keep the sweep cheap:
one forward pass over the evaluation split per τ instead of ``n_samples``; the numbers are therefore
those of the mean model, not of the trial's MC predictive. τ = +inf keeps every rank and reproduces
the unpruned mean model exactly.

Model rebuild (:func:`lrvd_bench.reload.rebuild`, as :func:`lrvd_bench.trial._run`): ``spec.json`` →
method, task, backbone, loaders (same limits and seed, so the same evaluation split) → ``method.attach``
→ ``method.load_adapter``.

Outputs (``out/tau_sweep``): ``tau_sweep.csv`` (method, task, seed, tau, effective_rank, full_rank,
accuracy, ece, nll, brier), ``tau_sweep_<task>.png`` (accuracy and ECE against effective rank).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lrvd_bench.analyze.common import SkipAnalysis, Trial, write_csv
from lrvd_bench.figures import pyplot, safe, save_figure
from lrvd_bench.reload import rebuild  # noqa: F401  (also imported from here by analyze.snr)

TAU_GRID = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, math.inf)


def sweep_model(method, model, loader, taus=TAU_GRID, device: Any = "cpu") -> list[dict[str, float]]:
    """Evaluate ``model`` (LRVD layers attached, trained) with ranks of log α ≥ τ switched off, per τ."""
    import torch

    from lrvd.inject import lrvd_modules
    from lrvd.metrics import classification_metrics
    from lrvd.training import predict

    layers = lrvd_modules(model)
    if not layers:
        raise SkipAnalysis("model has no LRVD layers")
    with torch.no_grad():
        saved = {name: layer.A_mu.detach().clone() for name, layer in layers.items()}
        log_alpha = {name: layer.rank_log_alpha().detach().clone() for name, layer in layers.items()}
    full = sum(layer.r for layer in layers.values())
    rows = []
    try:
        for tau in taus:
            kept = 0
            with torch.no_grad():
                for name, layer in layers.items():
                    keep = log_alpha[name] < tau
                    kept += int(keep.sum())
                    layer.A_mu.copy_(saved[name] * keep[:, None].to(saved[name].dtype))
            probs, labels = predict(method, model, loader, n_samples=0, device=device, progress=False)
            rows.append(
                {"tau": float(tau), "effective_rank": kept, "full_rank": full, **classification_metrics(probs, labels)}
            )
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.A_mu.copy_(saved[name])
    return rows


def _is_lrvd_adapter(trial: Trial) -> bool:
    from lrvd.adapter_io import has_adapter, read_meta

    if not (has_adapter(trial.path / "adapter") and (trial.path / "spec.json").exists()):
        return False
    try:
        return "ranks" in read_meta(trial.path / "adapter").get("extra", {}) and trial.ok
    except ValueError:  # LRVDError is a ValueError; so is bad JSON
        return False


def run(trials: list[Trial], out: Path, taus=TAU_GRID, device: str = "cpu") -> tuple[list[Path], list[str]]:
    import pandas as pd

    candidates = [t for t in trials if _is_lrvd_adapter(t)]
    if not candidates:
        raise SkipAnalysis("no finished BayesLoRA trial with spec.json and adapter/ (ranks in its sidecar)")
    rows, notes = [], []
    for t in candidates:
        try:
            method, model, loader = rebuild(t.path)
            for row in sweep_model(method, model, loader, taus, device=device):
                rows.append({"method": t.method, "task": t.task, "seed": t.seed, **row})
        except Exception as err:  # a backbone that cannot be loaded offline, a changed task, …
            notes.append(f"tau_sweep: {t.label} skipped ({type(err).__name__}: {str(err).strip()[:120]})")
    if not rows:
        raise SkipAnalysis("no trial could be rebuilt: " + "; ".join(notes)[:300])
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    files = [write_csv(frame, out / "tau_sweep.csv")]
    plt = pyplot()
    for task, g in frame.groupby("task"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for (method, seed), h in g.groupby(["method", "seed"]):
            h = h.sort_values("tau")
            for ax, metric in zip(axes, ("accuracy", "ece")):
                ax.plot(h["effective_rank"] / h["full_rank"], h[metric], "o-", label=f"{method} s{seed}")
        for ax, metric in zip(axes, ("accuracy", "ece")):
            ax.set_xlabel("kept rank fraction (effective / attached rank)")
            ax.set_ylabel(f"{metric} (mean model)")
        axes[0].legend(fontsize=7)
        fig.suptitle(
            f"{task}: prune at τ ∈ {{{', '.join(f'{x:g}' for x in sorted(g['tau'].unique()))}}}, no retraining",
            fontsize=8,
        )
        files.append(save_figure(fig, out / f"tau_sweep_{safe(task)}.png"))
    return files, notes
