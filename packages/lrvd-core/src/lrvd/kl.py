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


def total_kl(model: nn.Module) -> torch.Tensor:
    """Σ over every LRVD layer in ``model`` of its KL (a 0-dim tensor; 0 if there is none)."""
    from lrvd.layers import LRVDLinear

    terms = [m.kl() for m in model.modules() if isinstance(m, LRVDLinear)]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()
