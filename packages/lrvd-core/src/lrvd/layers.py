"""The LRVD layer: a frozen linear map plus a LoRA update with a rank-wise Gaussian posterior.

Parameterisation (authors' code, github mercury0100/bayeslora ``bayeslora/hf.py``; docs/methods.md)::

    y = W x + s · B A x,            s = lora_alpha / r   (fixed at attach time, unchanged by pruning)
    q(A_kj) = N(A_mu[k, j], σ_k²),  q(B_ik) = N(B_mu[i, k], σ_k²)

One ``rank_log_sigma2[k]`` is shared by row k of A and column k of B ("tie_alpha_per_rank"), so
the posterior costs exactly r extra parameters per module. Sharing the variance across the whole
rank component is what makes the noise-to-signal ratio a property of a rank direction (and breaks
LoRA's rotational gauge symmetry B A = B M M⁻¹ A, §A.1 v4), so whole ranks can be pruned.

Per-entry noise-to-signal ratio: log α_ij = log σ_k² − log μ_ij² (additive reparameterisation of
Molchanov et al. 2017). Rank summary (what pruning thresholds):

    log α_k = ½ ( median_j log α_A[k, j] + median_i log α_B[i, k] ).

Modes:
- ``factor`` (default): additive factor noise A = A_mu + σ_k ε, B = B_mu + σ_k ε; optionally the
  local reparameterisation trick during training (Kingma et al. 2015) with the moments
  m_s = x A_mu^T, v_s = x² s2_A^T, m_y = m_s B_mu^T, v_y = v_s (B_mu²)^T + m_s² s2_B^T + v_s s2_B^T.
- ``gate``: structured multiplicative noise on rank components, ΔW = B_mu diag(z) A_mu with
  z_k = 1 + √α_k ε_k and α_k = exp(log α_k) from the rank summary above (clipped, see
  ``GATE_LOG_ALPHA_MAX``). Same parameters, same KL, same pruning.

Sampling happens iff ``layer.sampling`` is True, or it is None (the default) and the layer is in
training mode; evaluation therefore uses the posterior means unless sampling is requested (see
:func:`lrvd.inject.sampling`). ``n_weight_samples = S > 1`` splits the leading batch dimension into
S sample-major groups, each with its own weight sample: one forward pass then evaluates S members
of the posterior predictive (batch-first models only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lrvd.kl import factor_kl

LOG_SIGMA2_MIN, LOG_SIGMA2_MAX = -20.0, 2.0  # clamp of the authors' code
MU2_EPS = 1e-8  # log(μ² + eps): a mean of exactly 0 would give log α = +inf
GATE_LOG_ALPHA_MAX = 8.0  # gate noise std ≤ e⁴ ≈ 55; such ranks are pruned long before this matters
VARIANTS = ("factor", "gate")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 style ``Conv1D``: a linear map whose weight is stored [in, out]."""
    from transformers.pytorch_utils import Conv1D  # transformers is a dependency of lrvd-core

    return isinstance(module, Conv1D)


def frozen_linear_shape(base_layer: nn.Module, wrapper: str) -> tuple[bool, int, int]:
    """Freeze ``base_layer`` and return ``(fan_in_fan_out, in_features, out_features)``.

    Shared by every adapter wrapper (LRVD, BLoB): nn.Linear stores weight [out, in], Conv1D [in, out].
    """
    base_layer.requires_grad_(False)
    weight = base_layer.weight
    if is_conv1d(base_layer):
        return True, weight.shape[0], weight.shape[1]
    if isinstance(base_layer, nn.Linear):
        return False, weight.shape[1], weight.shape[0]
    raise TypeError(f"{wrapper} wraps nn.Linear or Conv1D, got {type(base_layer).__name__}")


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Adapter parameters live in fp32 unless the base is fp64 (as peft's autocast_adapter_dtype):
    log-variances near −20 and tiny B entries do not survive bf16/fp16/int8 storage."""
    return base_dtype if base_dtype == torch.float64 else torch.float32


class _OutputNoise(torch.autograd.Function):
    """√(c + q ⊗ w) · ε with ε ~ N(0, 1) of shape [..., d_out] (c, q: [..., 1]; w: [d_out]).

    Autograd through sqrt and addcmul would keep both the std and ε of every adapted module until
    backward and spend four [..., d_out] kernels there; the gradient only needs ε / (2 std), so this
    keeps that one tensor (computed in place over ε) and spends one kernel plus three reductions.
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        std = torch.addcmul(c, q, w).sqrt_()
        eps = torch.randn_like(std)
        noise = std * eps
        ctx.save_for_backward(eps.div_(std).mul_(0.5), q, w)  # d noise / d v = ε / (2 std)
        return noise

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        half_eps_over_std, q, w = ctx.saved_tensors
        grad_v = grad * half_eps_over_std  # [..., d_out]
        grad_c = grad_v.sum(-1, keepdim=True) if ctx.needs_input_grad[0] else None
        grad_q = (grad_v @ w).unsqueeze(-1) if ctx.needs_input_grad[1] else None
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = (q.reshape(1, -1) @ grad_v.reshape(-1, grad_v.shape[-1])).reshape(-1)
        return grad_c, grad_q, grad_w


class LRVDLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` or transformers ``Conv1D`` and adds the LRVD adapter path.

    Initialisation follows LoRA/the authors: A_mu ~ kaiming_uniform(a=√5) (nn.Linear's default),
    B_mu ~ U(−1e-3, 1e-3) instead of LoRA's zeros, so that log α_B = log σ² − log B_mu² is finite and
    the KL has a gradient from step 0 (ΔW starts at ~1e-3 scale, practically zero).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        r: int,
        scaling: float,
        *,
        init_log_sigma2: float = -8.0,
        variant: str = "factor",
        local_reparam: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown LRVD variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if r < 1:
            raise ValueError(f"rank must be >= 1, got {r}")
        self.base_layer = base_layer
        self.fan_in_fan_out, self.in_features, self.out_features = frozen_linear_shape(base_layer, "LRVDLinear")
        weight = base_layer.weight
        kw = {"device": weight.device, "dtype": adapter_dtype(weight.dtype)}
        self.A_mu = nn.Parameter(torch.empty(r, self.in_features, **kw))  # [r, d_in]
        self.B_mu = nn.Parameter(torch.empty(self.out_features, r, **kw))  # [d_out, r]
        self.rank_log_sigma2 = nn.Parameter(torch.full((r,), float(init_log_sigma2), **kw))  # [r]
        self.scaling = float(scaling)
        self.variant = variant
        self.local_reparam = local_reparam
        self.sampling: bool | None = None
        self.n_weight_samples = 1
        self.reset_parameters(init_log_sigma2)

    @torch.no_grad()
    def reset_parameters(self, init_log_sigma2: float = -8.0) -> None:
        nn.init.kaiming_uniform_(self.A_mu, a=math.sqrt(5))
        nn.init.uniform_(self.B_mu, -1e-3, 1e-3)
        self.rank_log_sigma2.fill_(init_log_sigma2)

    @property
    def r(self) -> int:
        return self.A_mu.shape[0]

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}, "
            f"variant={self.variant}, local_reparam={self.local_reparam}"
        )

    # -- posterior statistics --------------------------------------------------------------------
    def log_sigma2(self) -> torch.Tensor:  # [r]
        return self.rank_log_sigma2.clamp(LOG_SIGMA2_MIN, LOG_SIGMA2_MAX)

    def log_alpha_A(self) -> torch.Tensor:  # [r, d_in]
        return self.log_sigma2()[:, None] - torch.log(self.A_mu.square() + MU2_EPS)

    def log_alpha_B(self) -> torch.Tensor:  # [d_out, r]
        return self.log_sigma2()[None, :] - torch.log(self.B_mu.square() + MU2_EPS)

    def kl(self) -> torch.Tensor:
        """Σ over all r·(d_in + d_out) factor entries of KL(q ‖ log-uniform) (:func:`kl_log_uniform`)."""
        log_sigma2 = self.log_sigma2()
        return factor_kl(log_sigma2, self.A_mu, 0, MU2_EPS) + factor_kl(log_sigma2, self.B_mu, 1, MU2_EPS)

    def rank_log_alpha(self) -> torch.Tensor:  # [r]
        """log α_k = ½(median_j log α_A[k, j] + median_i log α_B[i, k]); torch's lower median for
        even counts. Invariant to the gauge rescaling A_k → cA_k, B_k → B_k/c (the two medians
        shift by ∓2 log c), so :func:`lrvd.pruning.fix_gauge` does not change pruning decisions."""
        return 0.5 * (self.log_alpha_A().median(dim=1).values + self.log_alpha_B().median(dim=0).values)

    def delta_weight(self) -> torch.Tensor:  # [d_out, d_in]
        """Mean update s · B_mu A_mu in nn.Linear orientation."""
        return self.scaling * (self.B_mu @ self.A_mu)

    # -- sampling ----------------------------------------------------------------------------------
    def is_sampling(self) -> bool:
        return self.training if self.sampling is None else bool(self.sampling)

    def sample_factors(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws of (A [n, r, d_in], B [n, d_out, r]) from q (factor variant)."""
        sigma = torch.exp(0.5 * self.log_sigma2())
        A = self.A_mu + sigma[:, None] * torch.randn((n, *self.A_mu.shape), device=sigma.device, dtype=sigma.dtype)
        B = self.B_mu + sigma[None, :] * torch.randn((n, *self.B_mu.shape), device=sigma.device, dtype=sigma.dtype)
        return A, B

    def sample_gates(self, n: int = 1) -> torch.Tensor:  # [n, r]
        """``n`` draws of z_k = 1 + √α_k ε_k (gate variant)."""
        log_alpha = self.rank_log_alpha().clamp(max=GATE_LOG_ALPHA_MAX)
        eps = torch.randn((n, self.r), device=log_alpha.device, dtype=log_alpha.dtype)
        return 1.0 + torch.exp(0.5 * log_alpha) * eps

    def _local_reparam_delta(self, x: torch.Tensor) -> torch.Tensor:
        """s · (a sample of B A x) drawn directly from its Gaussian moments (Kingma et al. 2015).

        Every σ² entry of row k of A / column k of B equals s2_k, so with q = Σ_j x_j²:
        m_s = x A_mu^T, v_s = q s2, m_y = m_s B_mu^T and
        v_y = v_s (B_mu²)^T + Σ_k (m_s,k² + v_s,k) s2_k = q · (B_mu² s2) + m_s² · s2 + q Σ_k s2_k²,
        an outer product instead of a second matmul through B_mu², and the scaling s is applied to the
        small factors (s m_s, s² in the variance) rather than to the [tokens, d_out] output.
        """
        s2 = torch.exp(self.log_sigma2())  # [r]
        scale2 = self.scaling * self.scaling
        m_s = x @ self.A_mu.T  # [..., r]
        q = torch.linalg.vecdot(x, x).unsqueeze(-1)  # [..., 1]
        m_y = (self.scaling * m_s) @ self.B_mu.T  # [..., d_out]
        w = (self.B_mu.square() @ s2).mul_(scale2)  # [d_out]
        c = (m_s.square() @ (scale2 * s2)).unsqueeze(-1) + q * (scale2 * s2.square().sum()) + 1e-12  # [..., 1]
        return m_y + _OutputNoise.apply(c, q, w)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter path s · B A x in the adapter dtype (means, or a posterior sample)."""
        x = x.to(self.A_mu.dtype)
        if not self.is_sampling():
            return self.scaling * ((x @ self.A_mu.T) @ self.B_mu.T)
        n = max(1, int(self.n_weight_samples))
        if self.variant == "factor" and self.local_reparam:
            # Whenever sampling, in training and prediction, as the authors' layer: each row (token)
            # draws its own output noise, so replica groups need no weight sample of their own.
            return self._local_reparam_delta(x)
        if x.shape[0] % n:
            raise ValueError(f"leading dim {x.shape[0]} is not a multiple of n_weight_samples={n}")
        xg = x.reshape(n, -1, self.in_features)  # [S, rows, d_in], sample-major groups
        if self.variant == "gate":
            h = (xg @ self.A_mu.T) * self.sample_gates(n)[:, None, :]  # [S, rows, r]
            out = h @ self.B_mu.T
        else:
            A, B = self.sample_factors(n)
            out = (xg @ A.transpose(1, 2)) @ B.transpose(1, 2)  # [S, rows, d_out]
        return self.scaling * out.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.r == 0:
            # Pruned away: contribute nothing *and* stay out of the autograd graph. An empty x @ A^T
            # would still make autograd backpropagate into x, i.e. through every frozen layer below.
            return out
        return out + self.adapter_delta(x).to(out.dtype)


def total_kl(model: nn.Module) -> torch.Tensor:
    """Σ over every LRVD layer in ``model`` of its KL (a 0-dim tensor; 0 if there is none): the KL term
    of BayesLoRA's loss (the per-entry formula is :mod:`lrvd.kl`'s)."""
    terms = [m.kl() for m in model.modules() if isinstance(m, LRVDLinear)]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()
