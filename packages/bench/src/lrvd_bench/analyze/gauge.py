"""Gauge / SVD alignment: does BayesLoRA's log-α order find the energetic directions of ΔW = B·A?

Per adapted module with factors A [r, d_in], B [d_out, r] the *energy* of keeping a set S of rank
components is ‖B_S A_S‖_F² / ‖B A‖_F² (the scaling s cancels). Curves over k = 1..r:

- ``svd``: Σ_{i≤k} σ_i² / Σ σ_i² of ΔW (Eckart–Young: the upper bound of any rank-k reconstruction);
- ``bayes``: the top-k components in ascending log α_k (BayesLoRA's keep order);
- ``random``: the same for ``n_perm`` (≥ 100) seeded random permutations of the r components.

With M = (BᵀB) ⊙ (AAᵀ)ᵀ, ‖B_S A_S‖² = Σ_{i,j∈S} M_ij, so a whole curve is the diagonal of the 2-D
cumulative sum of M permuted by the order (non-orthogonal components may overshoot 1 before k = r).
AUC = mean of a curve over k; the reported improvement is AUC(bayes) − mean AUC(random) per module
and seed (> 0: log α ranks components better than chance).

Input: BayesLoRA trials' saved ``adapter/`` (native ``*.A_mu``, ``*.B_mu``, ``*.rank_log_sigma2``);
log α is recomputed with :meth:`lrvd.layers.LRVDLinear.rank_log_alpha`. Outputs (``out/gauge``):
``gauge_curves.csv`` (method, task, seed, module, k, svd, bayes, random_mean, random_std),
``gauge_auc.csv`` (… module, r, auc_svd, auc_bayes, auc_random, auc_improvement),
``gauge_curves_<task>.png`` (mean curves over modules and seeds), ``gauge_auc_hist.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrvd_bench.analyze.common import SkipAnalysis, Trial, write_csv
from lrvd_bench.figures import pyplot, safe, save_figure

N_PERM = 200


def _energy_matrix(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return (B.T @ B) * (A @ A.T).T  # [r, r]


def order_curve(A: np.ndarray, B: np.ndarray, order) -> np.ndarray:
    """Energy fraction of the first k components of ``order`` (one order [r] or a batch [n, r])."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    M = _energy_matrix(A, B)
    total = float(M.sum())
    order = np.asarray(order)
    batch = order if order.ndim == 2 else order[None]
    P = M[batch[:, :, None], batch[:, None, :]]  # [n, r, r]
    C = P.cumsum(1).cumsum(2)
    curves = np.diagonal(C, axis1=1, axis2=2) / (total if total > 0 else 1.0)
    return curves if order.ndim == 2 else curves[0]


def svd_curve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cumulative σ_i² / Σσ² of ΔW = B A, for k = 1..r."""
    s = np.linalg.svd(np.asarray(B, np.float64) @ np.asarray(A, np.float64), compute_uv=False)[: np.shape(A)[0]]
    e = s**2
    total = e.sum()
    return np.cumsum(e) / (total if total > 0 else 1.0)


def auc(curve: np.ndarray) -> float | np.ndarray:
    return np.asarray(curve).mean(-1)


def alignment(A, B, log_alpha, n_perm: int = N_PERM, seed: int = 0) -> dict:
    """Curves and AUCs of one module: svd, bayes (ascending log α), random (``n_perm`` permutations)."""
    r = np.shape(A)[0]
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(r) for _ in range(n_perm)])
    random = order_curve(A, B, perms)
    bayes = order_curve(A, B, np.argsort(np.asarray(log_alpha), kind="stable"))
    svd = svd_curve(A, B)
    out = {
        "svd": svd,
        "bayes": bayes,
        "random_mean": random.mean(0),
        "random_std": random.std(0),
        "auc_svd": float(auc(svd)),
        "auc_bayes": float(auc(bayes)),
        "auc_random": float(auc(random).mean()),
    }
    out["auc_improvement"] = out["auc_bayes"] - out["auc_random"]
    return out


def adapter_factors(adapter_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Module name → (A_mu, B_mu, rank log α) from a saved BayesLoRA adapter."""
    import torch
    from torch import nn

    from lrvd.adapter_io import read_adapter
    from lrvd.layers import LRVDLinear

    state = read_adapter(adapter_dir)[1]
    out = {}
    for key in state:
        if not key.endswith(".A_mu"):
            continue
        prefix = key[: -len(".A_mu")]
        A, B, ls2 = state[key], state.get(prefix + ".B_mu"), state.get(prefix + ".rank_log_sigma2")
        if B is None or ls2 is None or A.shape[0] == 0:
            continue
        layer = LRVDLinear(nn.Linear(A.shape[1], B.shape[0], bias=False), A.shape[0], 1.0)
        with torch.no_grad():
            layer.A_mu.copy_(A.float()), layer.B_mu.copy_(B.float()), layer.rank_log_sigma2.copy_(ls2.float())
            log_alpha = layer.rank_log_alpha()
        name = prefix.removeprefix("backbone.")
        out[name] = (A.double().numpy(), B.double().numpy(), log_alpha.double().numpy())
    return out


def run(trials: list[Trial], out: Path, n_perm: int = N_PERM) -> list[Path]:
    import pandas as pd

    curves, aucs = [], []
    for t in trials:
        from lrvd.adapter_io import has_adapter

        if not has_adapter(t.path / "adapter"):
            continue
        factors = adapter_factors(t.path / "adapter")
        for i, (module, (A, B, la)) in enumerate(sorted(factors.items())):
            res = alignment(A, B, la, n_perm=n_perm, seed=1000 * t.seed + i)
            ident = {"method": t.method, "task": t.task, "seed": t.seed, "module": module}
            aucs.append(
                {
                    **ident,
                    "r": A.shape[0],
                    **{k: res[k] for k in ("auc_svd", "auc_bayes", "auc_random", "auc_improvement")},
                }
            )
            for k in range(A.shape[0]):
                curves.append(
                    {
                        **ident,
                        "k": k + 1,
                        "svd": res["svd"][k],
                        "bayes": res["bayes"][k],
                        "random_mean": res["random_mean"][k],
                        "random_std": res["random_std"][k],
                    }
                )
    if not aucs:
        raise SkipAnalysis("no BayesLoRA adapter (adapter/ with A_mu/B_mu) in any trial")
    out.mkdir(parents=True, exist_ok=True)
    curves_df, auc_df = pd.DataFrame(curves), pd.DataFrame(aucs)
    files = [write_csv(curves_df, out / "gauge_curves.csv"), write_csv(auc_df, out / "gauge_auc.csv")]
    plt = pyplot()
    for task, g in curves_df.groupby("task"):
        mean = g.groupby("k")[["svd", "bayes", "random_mean"]].mean()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(mean.index, mean["svd"], "k--", label="SVD of ΔW (upper bound)")
        ax.plot(mean.index, mean["bayes"], "o-", label="ascending log α (BayesLoRA)")
        ax.plot(mean.index, mean["random_mean"], ":", label=f"random order (mean of {n_perm})")
        ax.set_xlabel("components kept k")
        ax.set_ylabel("energy fraction ‖ΔW_k‖² / ‖ΔW‖²")
        ax.set_title(f"{task}: mean over modules and seeds", fontsize=9)
        ax.legend(fontsize=7)
        files.append(save_figure(fig, out / f"gauge_curves_{safe(task)}.png"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(auc_df["auc_improvement"], bins=min(30, max(5, len(auc_df) // 2)))
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("AUC(log α order) − mean AUC(random order)")
    ax.set_ylabel("modules × seeds")
    ax.set_title(f"median {auc_df['auc_improvement'].median():.3g} over {len(auc_df)} modules × seeds", fontsize=9)
    files.append(save_figure(fig, out / "gauge_auc_hist.png"))
    return files
