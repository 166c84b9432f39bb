"""Rank selection for LRVD: rank-wise log α, effective rank, gauge fixing and physical pruning.

A rank component k is "off" when its noise-to-signal ratio is high: log α_k ≥ τ (τ = 3, i.e.
α ≈ 20, equivalent dropout rate p > 0.95 — Molchanov et al. 2017's threshold applied per rank,
docs/methods.md). The effective rank of a module is #{k : log α_k < τ}; of a model, the sum.

:func:`prune_ranks` removes those components *physically*: A_mu, B_mu and rank_log_sigma2 are
sliced into new, smaller Parameters, and the optimizer is patched in place (parameters swapped in
``param_groups``, AdamW moments sliced, ``step`` kept) so training simply continues. Removing a
component changes the mean model by exactly that component's contribution s·B_k A_k, which is
negligible when log α_k is large.
"""

from __future__ import annotations

import torch
from torch import nn

from lrvd.inject import lrvd_modules
from lrvd.layers import LRVDLinear


def _layers(model_or_layer: nn.Module) -> dict[str, LRVDLinear]:
    if isinstance(model_or_layer, LRVDLinear):
        return {"": model_or_layer}
    return lrvd_modules(model_or_layer)


@torch.no_grad()
def rank_log_alphas(model_or_layer: nn.Module) -> dict[str, torch.Tensor]:
    """Module name → rank log α ``[r]`` (detached, fp32, CPU)."""
    return {name: layer.rank_log_alpha().float().cpu() for name, layer in _layers(model_or_layer).items()}


def rank_statistics(model_or_layer: nn.Module) -> dict[str, list[float]]:
    """Module name → per-rank log α as floats (JSON-ready snapshot for the rank-dynamics analyses)."""
    return {name: la.tolist() for name, la in rank_log_alphas(model_or_layer).items()}


def rank_report(model_or_layer: nn.Module, tau: float = 3.0) -> dict[str, int]:
    """Module name → effective rank #{k : log α_k < τ}."""
    return {name: int((la < tau).sum()) for name, la in rank_log_alphas(model_or_layer).items()}


def effective_rank(model_or_layer: nn.Module, tau: float = 3.0) -> int:
    """#ranks with log α_k < τ, summed over every LRVD module (a layer: that layer's count)."""
    return sum(rank_report(model_or_layer, tau).values())


@torch.no_grad()
def fix_gauge(model_or_layer: nn.Module) -> None:
    """Rescale A_k → c_k A_k, B_k → B_k / c_k with c_k = √(‖B_k‖/‖A_k‖) so ‖A_k‖ = ‖B_k‖.

    B A is unchanged (the diagonal gauge freedom of LoRA), and so is log α_k (see
    :meth:`LRVDLinear.rank_log_alpha`); it removes the arbitrary split of a component's norm between
    A and B that the factor noise σ_k (shared by both) would otherwise see asymmetrically.
    """
    for layer in _layers(model_or_layer).values():
        norm_a = layer.A_mu.norm(dim=1).clamp(min=1e-12)  # [r]
        norm_b = layer.B_mu.norm(dim=0).clamp(min=1e-12)  # [r]
        c = torch.sqrt(norm_b / norm_a)
        layer.A_mu.mul_(c[:, None])
        layer.B_mu.div_(c[None, :])


def _swap_parameter(
    optimizer: torch.optim.Optimizer | None, old: nn.Parameter, new: nn.Parameter, index: torch.Tensor, dim: int
) -> None:
    """Replace ``old`` by ``new`` in the optimizer; slice every state tensor shaped like ``old``."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {
            k: (v.index_select(dim, index.to(v.device)) if torch.is_tensor(v) and v.shape == old.shape else v)
            for k, v in state.items()
        }


@torch.no_grad()
def prune_layer(layer: LRVDLinear, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Keep only the rank components ``keep`` (indices or a bool mask ``[r]``) of ``layer``."""
    keep = keep.to(layer.A_mu.device)
    index = keep.nonzero().flatten() if keep.dtype == torch.bool else keep.long()
    for attr, dim in (("A_mu", 0), ("B_mu", 1), ("rank_log_sigma2", 0)):
        old: nn.Parameter = getattr(layer, attr)
        new = nn.Parameter(old.detach().index_select(dim, index).clone(), requires_grad=old.requires_grad)
        _swap_parameter(optimizer, old, new, index, dim)
        setattr(layer, attr, new)


def prune_ranks(
    model_or_layer: nn.Module,
    tau: float = 3.0,
    min_ranks: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, int]:
    """Remove every rank with log α_k ≥ τ, keeping per module at least ``min_ranks`` (the lowest log α).

    Returns module name → number of ranks removed (0 for untouched modules). Pass the optimizer that
    trains the model so it keeps stepping on the new, smaller parameters.
    """
    removed: dict[str, int] = {}
    for name, layer in _layers(model_or_layer).items():
        with torch.no_grad():
            log_alpha = layer.rank_log_alpha()
        keep = log_alpha < tau
        floor = min(min_ranks, layer.r)
        if int(keep.sum()) < floor:
            keep = torch.zeros_like(keep)
            keep[log_alpha.argsort()[:floor]] = True
        removed[name] = layer.r - int(keep.sum())
        if removed[name]:
            prune_layer(layer, keep, optimizer)
    return removed
