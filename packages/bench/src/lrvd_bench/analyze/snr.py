"""SNR vs sensitivity (AdaLoRA-IVON / AdaLoRA): do posterior SNR importances rank triplets like |μ| and
AdaLoRA's sensitivity?

Triplet score as peft's RankAllocator combines element scores:
``S_k = s(λ_k) + mean_j s(Q_kj) + mean_i s(P_ik)`` (``lora_E``, ``lora_A``, ``lora_B``).

- SNR importance: s = :func:`lrvd_baselines.adalora_ivon.importance` with the run's criterion
  (default ``snr-abs``) on the saved posterior (μ and σ, the extra tensors ``ivon_std.*``, from the
  saved ``adapter/``, read with :func:`lrvd.adapter_io.read_adapter`);
- magnitude: s = |μ| (criterion ``mean``);
- sensitivity: AdaLoRA's s = Ī·Ū (EMAs of |w·∂L/∂w| and of its deviation, β1, β2 of the run) is
  *not* saved by trials (peft keeps it in the allocator, dropped after training; AdaLoRA-IVON never
  computes it). It is read from ``adapter/sensitivity.safetensors`` (parameter name → element
  score) when present; otherwise it is **recomputed**: the trial is rebuilt (spec.json + adapter,
  as the τ sweep does), and peft's update is emulated at the *final posterior mean* over
  ``max_batches`` training batches (cross-entropy only, model in eval mode, so deterministic). This
  is the sensitivity AdaLoRA would see at the end of training, not the EMA along the trajectory
  that drove its masking. If the rebuild fails the correlation is reported as missing (one note).

Per module (≥ 3 triplets) the Spearman rank correlation (:func:`scipy.stats.spearmanr`, ties
averaged) of SNR vs |μ| (and SNR vs sensitivity when available). Outputs (``out/snr``):
``snr_scores.csv`` (per triplet), ``snr_spearman.csv`` (per module and seed), ``snr_spearman.png``
(histogram of ρ per method).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrvd.registry import method_capability
from lrvd_bench.analyze.common import SkipAnalysis, Trial, write_csv
from lrvd_bench.figures import pyplot, save_figure

STD_PREFIX = "ivon_std."
SENSITIVITY_FILE = "sensitivity.safetensors"


def spearman(x, y) -> float:
    """Spearman ρ (ties averaged), :func:`scipy.stats.spearmanr`; NaN if fewer than 2 points or a constant."""
    import warnings

    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():  # a constant input gives NaN (and scipy's ConstantInputWarning)
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def triplet_scores(E, A, B) -> np.ndarray:
    """peft's combination: s(E)[r] + mean over d_in of s(A)[r, d_in] + mean over d_out of s(B)[d_out, r]."""
    return np.asarray(E).reshape(-1) + np.asarray(A).mean(1) + np.asarray(B).mean(0)


def ema_sensitivity(ipts, beta1: float = 0.85, beta2: float = 0.85) -> np.ndarray:
    """peft RankAllocator.update_ipt over a sequence of |w·g| arrays, then _element_score = Ī·Ū."""
    avg_ipt = avg_unc = 0.0
    for ipt in ipts:
        ipt = np.asarray(ipt, dtype=np.float64)
        avg_ipt = beta1 * avg_ipt + (1 - beta1) * ipt
        avg_unc = beta2 * avg_unc + (1 - beta2) * np.abs(ipt - avg_ipt)
    return np.asarray(avg_ipt * avg_unc)


def recompute_sensitivity(trial_dir: Path, max_batches: int = 16) -> dict[str, np.ndarray]:
    """Rebuild the trial and emulate AdaLoRA's sensitivity at the trained weights (see module doc)."""
    import torch

    from lrvd_bench.analyze.tau_sweep import rebuild

    method, model, data = rebuild(trial_dir, with_data=True)
    beta1, beta2 = getattr(method.params, "beta1", 0.85), getattr(method.params, "beta2", 0.85)
    params = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    model.eval()
    ipts: dict[str, list[np.ndarray]] = {n: [] for n in params}
    for i, batch in enumerate(data.train_loader):
        if i >= max_batches:
            break
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(batch).float(), batch["labels"])
        loss.backward()
        for n, p in params.items():
            ipts[n].append(
                (p.detach() * p.grad).abs().double().numpy() if p.grad is not None else np.zeros(tuple(p.shape))
            )
    return {n: ema_sensitivity(v, beta1, beta2) for n, v in ipts.items() if v}


def _modules(state: dict) -> dict[str, dict[str, str]]:
    """Module prefix → {E, A, B: parameter name} for peft AdaLoRA parameters ``….lora_X.default``."""
    out: dict[str, dict[str, str]] = {}
    for key in state:
        for factor in ("E", "A", "B"):
            tag = f".lora_{factor}."
            if tag in key:
                prefix = key[: key.index(tag)]
                out.setdefault(prefix, {})[factor] = key
    return {k: v for k, v in out.items() if len(v) == 3}


def module_correlations(mu: dict, sigma: dict | None, sensitivity: dict | None, criterion: str) -> list[dict]:
    """Per module: triplet scores and Spearman correlations (see the module docstring)."""
    import torch

    from lrvd_baselines.adalora_ivon import importance

    rows = []
    for prefix, names in sorted(_modules(mu).items()):

        def score(fn, names=names) -> np.ndarray:
            return triplet_scores(*(fn(names[f]) for f in ("E", "A", "B")))

        magnitude = score(lambda n: np.abs(np.asarray(mu[n], dtype=np.float64)))
        row: dict = {
            "module": prefix.removeprefix("backbone.").removeprefix("base_model.model."),
            "r": len(magnitude),
            "magnitude": magnitude,
        }
        if sigma is not None and all(names[f] in sigma for f in "EAB"):
            row["snr"] = score(
                lambda n: importance(
                    criterion,
                    torch.as_tensor(np.asarray(mu[n], np.float64)),
                    torch.as_tensor(np.asarray(sigma[n], np.float64)),
                ).numpy()
            )
        if sensitivity is not None and all(names[f] in sensitivity for f in "EAB"):
            row["sensitivity"] = score(lambda n: np.asarray(sensitivity[n], dtype=np.float64))
        for a, b in (("snr", "magnitude"), ("snr", "sensitivity"), ("magnitude", "sensitivity")):
            if a in row and b in row:
                row[f"rho_{a}_{b}"] = spearman(row[a], row[b])
        rows.append(row)
    return rows


def _load(file: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.double().numpy() for k, v in load_file(str(file)).items()}


def run(trials: list[Trial], out: Path, recompute: bool = True, max_batches: int = 16) -> tuple[list[Path], list[str]]:
    import pandas as pd

    notes: list[str] = []
    score_rows, rho_rows = [], []
    from lrvd.adapter_io import has_adapter, read_adapter

    candidates = [t for t in trials if method_capability(t.method, "svd_triplets") and has_adapter(t.path / "adapter")]
    if not candidates:
        raise SkipAnalysis("no trial of a method with svd_triplets (adalora, adalora-ivon) with a saved adapter")
    missing_sigma = missing_sens = 0
    for t in candidates:
        adapter = t.path / "adapter"
        meta, mu, extra = read_adapter(adapter)
        mu, extra = ({k: v.double().numpy() for k, v in d.items()} for d in (mu, extra))
        sigma = {k[len(STD_PREFIX) :]: v for k, v in extra.items() if k.startswith(STD_PREFIX)} or None
        sens = _load(adapter / SENSITIVITY_FILE) if (adapter / SENSITIVITY_FILE).exists() else None
        if sens is None and recompute and (t.path / "spec.json").exists():
            try:
                sens = recompute_sensitivity(t.path, max_batches)
                notes.append(
                    f"snr: {t.label}: sensitivity recomputed at the trained weights ({max_batches} batches max)"
                )
            except Exception as err:
                notes.append(
                    f"snr: {t.label}: sensitivity not recomputed ({type(err).__name__}: {str(err).strip()[:100]})"
                )
        missing_sigma += sigma is None
        try:
            criterion = meta["params"].get("criterion", "snr-abs")
        except (OSError, ValueError, KeyError):
            criterion = "snr-abs"
        missing_sens += sens is None
        for row in module_correlations(mu, sigma, sens, criterion):
            ident = {"method": t.method, "task": t.task, "seed": t.seed, "module": row["module"]}
            for k in range(row["r"]):
                score_rows.append(
                    {**ident, "triplet": k, **{c: row[c][k] for c in ("snr", "magnitude", "sensitivity") if c in row}}
                )
            rho_rows.append(
                {
                    **ident,
                    "r": row["r"],
                    "criterion": criterion if sigma is not None else "",
                    **{c: v for c, v in row.items() if c.startswith("rho_")},
                }
            )
    if missing_sigma:
        notes.append(f"snr: {missing_sigma} trial(s) without IVON posterior std (adalora has none): SNR not computed")
    if missing_sens:
        notes.append(
            f"snr: {missing_sens} trial(s) without AdaLoRA sensitivity (not saved by trials and not "
            "recomputed): SNR-vs-sensitivity missing there"
        )
    out.mkdir(parents=True, exist_ok=True)
    rho = pd.DataFrame(rho_rows)
    files = [write_csv(pd.DataFrame(score_rows), out / "snr_scores.csv"), write_csv(rho, out / "snr_spearman.csv")]
    cols = [c for c in rho.columns if c.startswith("rho_") and rho[c].notna().any()]
    if cols:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2), squeeze=False)
        for ax, col in zip(axes[0], cols):
            for method, g in rho.groupby("method"):
                ax.hist(g[col].dropna(), bins=np.linspace(-1, 1, 21), alpha=0.6, label=method)
            ax.set_xlabel(f"Spearman ρ ({col[4:].replace('_', ' vs ')}) per module")
            ax.legend(fontsize=7)
        files.append(save_figure(fig, out / "snr_spearman.png"))
    return files, notes
