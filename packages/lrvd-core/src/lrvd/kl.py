"""KL divergence of a Gaussian factor posterior to the scale-invariant log-uniform prior.

LRVD puts the improper log-uniform prior p(|w|) ∝ 1/|w| on every entry of the LoRA factors A and B.
For q(w) = N(μ, σ²) the KL depends only on α = σ²/μ² (Kingma et al. 2015), and has no closed
form; we use the fit of Molchanov, Ashukha & Vetrov (2017, eq. 14):

    −KL(q ‖ p) ≈ k1·sigmoid(k2 + k3·log α) − ½·log(1 + 1/α) − k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695.

KL → 0 as α → ∞ (a weight drowned in noise costs nothing, which is what prunes it) and grows like
−½ log α for small α. See docs/methods.md (BayesLoRA) and Molchanov et al. 2017.
"""

from __future__ import annotations

import torch
from torch import nn

K1, K2, K3 = 0.63576, 1.87320, 1.48695


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, αμ²) ‖ log-uniform) as a function of ``log_alpha`` (Molchanov 2017, eq. 14).

    ``log(1 + 1/α)`` is evaluated as ``softplus(−log α)`` = log1p(exp(−log α)), which stays finite for
    very negative ``log_alpha`` (tiny noise) where 1/α would overflow.
    """
    log_alpha = torch.as_tensor(log_alpha)
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * nn.functional.softplus(-log_alpha) - K1
    return -neg_kl


class _FactorKL(torch.autograd.Function):
    """Σ KL over one LoRA factor, with its gradient computed in the same pass (fewer kernels and saved
    tensors than autograd through :func:`kl_log_uniform`; the value and gradient are the same)."""

    @staticmethod
    def forward(ctx, log_sigma2: torch.Tensor, mu: torch.Tensor, rank_dim: int, eps: float) -> torch.Tensor:
        ls2 = log_sigma2[:, None] if rank_dim == 0 else log_sigma2[None, :]
        mu2 = mu.square().add_(eps)
        neg_la = mu2.log().sub_(ls2)  # −log α = log(μ² + eps) − log σ²
        s = neg_la.mul(-K3).add_(K2).sigmoid_()  # sigmoid(K2 + K3 log α)
        softplus = nn.functional.softplus(neg_la)
        kl = K1 * mu.numel() - K1 * s.sum() + 0.5 * softplus.sum()
        # d KL / d log α = −K1 K3 s (1 − s) − ½ sigmoid(−log α)
        grad_la = torch.addcmul(s, s, s, value=-1.0).mul_(-K1 * K3).sub_(neg_la.sigmoid_(), alpha=0.5)
        grad_ls2 = grad_la.sum(dim=1 - rank_dim)  # log α = log σ²_k − log(μ² + eps)
        grad_mu = grad_la.mul_(mu).div_(mu2).mul_(-2.0)  # d log α / d μ = −2μ / (μ² + eps)
        ctx.save_for_backward(grad_ls2, grad_mu)
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        grad_ls2, grad_mu = ctx.saved_tensors
        return grad_out * grad_ls2, grad_out * grad_mu, None, None


def factor_kl(log_sigma2: torch.Tensor, mu: torch.Tensor, rank_dim: int, eps: float) -> torch.Tensor:
    """Σ_entries KL(N(μ, σ²_k) ‖ log-uniform) of one factor: ``log_sigma2`` [r] is shared along
    ``rank_dim`` of ``mu`` (A [r, d_in]: 0; B [d_out, r]: 1), log α = log σ²_k − log(μ² + eps).

    The same number as ``kl_log_uniform(log α).sum()``; when a gradient is needed it is computed in
    the forward pass (:class:`_FactorKL`), which costs about half the kernels of autograd.
    """
    if torch.is_grad_enabled() and (log_sigma2.requires_grad or mu.requires_grad):
        return _FactorKL.apply(log_sigma2, mu, rank_dim, eps)
    ls2 = log_sigma2[:, None] if rank_dim == 0 else log_sigma2[None, :]
    return kl_log_uniform(ls2 - torch.log(mu.square() + eps)).sum()
