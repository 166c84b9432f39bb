"""BLoB: Bayesian Low-Rank Adaptation by Backpropagation (Wang, Shi, Han, Metaxas, Wang; NeurIPS 2024).

Posterior (asymmetric Bayesianisation): only LoRA's A is random, B stays deterministic::

    q(A) = N(M, Ω²) elementwise,   Ω = G ∘ G   (``lora_A_std_sqrt`` holds G; std = G²)
    p(A) = N(0, σ_p²),             ΔW = s · B A,  s = alpha / r

Facts taken from the authors' code (github.com/Wang-ML-Lab/bayesian-peft, ``modelwrappers/blob.py``
and ``scripts/blob/*.sh``), which is what the reported numbers come from:

- G ~ U(ε/√2, ε) with ε = ``bayes_eps`` = 0.05, so the initial std G² ∈ [0.00125, 0.0025];
  M is LoRA's Kaiming-uniform A, B starts at zero; σ_p = ``bayes_beta`` = 0.2.
- Flipout: the mean path s·B M x is exact; the noise path is s·B(((x ∘ r) Eᵀ) ∘ t) with one
  E = G² ∘ ε per forward pass and random signs r ∈ {±1}^{d_in}, t ∈ {±1}^{r} per row (per token),
  so the examples of a batch see decorrelated weight noise at the cost of one extra low-rank matmul
  (here one B matmul for both paths: s·B(M x + noise)).
- KL = Σ_{A entries} log(σ_p/σ_q) + (σ_q² + μ²)/(2σ_p²) − ½ (closed form, no MC estimate).
- Optimisation is split in two: AdamW at ``lr`` on the NLL for M, B and the head; plain SGD at
  ``kl_lr`` (0.01 LLaMA scripts, 0.002 RoBERTa scripts; linear warm-up/decay like the main lr) on
  G's NLL gradient plus π_i ∂KL/∂(M, G). G is *not* in AdamW. Here the SGD step runs in
  ``on_step_end`` (after the loop's AdamW step) on the gradients the loop's backward left on G.
- KL re-weighting (``--bayes-klreweighting``, on in every script): the weight cycles over
  K = ⌊100 · N^{π/γ} / batch⌋ steps (γ = ``bayes_gamma`` = 8, N = training-set size) with
  π_i = 2^i / (2^{K+1} − 1), i = 1..K, so Σ_i π_i ≈ 1 per cycle and the weight is concentrated at
  the end of each cycle. Without re-weighting π_i = 1/(steps per epoch). The KL is never divided by
  N: its strength is set by ``kl_lr`` and the cycle length (which grows as N^0.39).
- Prediction: mean softmax over N = 10 samples; ``n_samples = 0`` is "BLoB (N=0)", the posterior mean.

Every default with its source and every deviation: docs/methods.md (BLoB).

Not supported: ``mixed_precision = fp16`` (the loss scaler would scale G's gradient unseen by the
SGD step); bf16 autocast (the CUDA default) is fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lrvd.classifier import ClassifierModel, count_parameters, freeze_all_but
from lrvd.errors import LRVDError, check_each
from lrvd.inject import replace_modules
from lrvd.layers import adapter_dtype, frozen_linear_shape
from lrvd.protocol import AdapterConfig, MethodBase, TrainPlan
from lrvd_baselines.peft_adapters import mean_softmax, model_device, sample_seed, seeded


@dataclass
class BLoBParams:
    """Defaults: the authors' LLaMA2-7B scripts (``scripts/blob/blob-llama-all.sh``)."""

    init_eps: float = field(default=0.05, metadata={"help": "G ~ U(eps/sqrt(2), eps), posterior std = G^2 (bayes_eps)"})
    prior_std: float = field(default=0.2, metadata={"help": "prior std sigma_p of A (bayes_beta)"})
    kl_lr: float = field(
        default=0.01, metadata={"help": "SGD lr of the KL / std step (bayes_kllr; RoBERTa scripts: 0.002)"}
    )
    kl_reweighting: bool = field(
        default=True, metadata={"help": "BLoB's cyclic 2^i KL weights (else 1/steps-per-epoch)"}
    )
    gamma: float = field(default=8.0, metadata={"help": "KL cycle length K = 100 N^(pi/gamma) / batch (bayes_gamma)"})
    n_samples: int = field(
        default=10, metadata={"help": "posterior samples at prediction (0: posterior mean, 'BLoB N=0')"}
    )

    def __post_init__(self) -> None:
        check_each(self, "> 0", ("init_eps", "prior_std", "gamma"), lambda v: v > 0)
        check_each(self, ">= 0", ("kl_lr", "n_samples"), lambda v: v >= 0)


class BLoBLinear(nn.Module):
    """A frozen linear map plus a LoRA path whose A has a diagonal Gaussian posterior (flipout noise)."""

    def __init__(self, base_layer: nn.Module, r: int, scaling: float, init_eps: float = 0.05) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out, self.in_features, self.out_features = frozen_linear_shape(base_layer, "BLoBLinear")
        weight = base_layer.weight
        kw = {"device": weight.device, "dtype": adapter_dtype(weight.dtype)}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))  # [r, d_in]  posterior mean M
        self.lora_A_std_sqrt = nn.Parameter(torch.empty(r, self.in_features, **kw))  # [r, d_in]  G, std = G²
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))  # [d_out, r]
        self.scaling = float(scaling)
        self.sampling: bool | None = None  # None: sample iff training
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.uniform_(self.lora_A_std_sqrt, init_eps / math.sqrt(2), init_eps)

    @property
    def r(self) -> int:
        return self.lora_A.shape[0]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}"

    def A_std(self) -> torch.Tensor:  # [r, d_in]
        return self.lora_A_std_sqrt.square()

    def kl(self, prior_std: float) -> torch.Tensor:
        """Σ_{A entries} KL(N(μ, σ²) ‖ N(0, σ_p²)) = log(σ_p/σ) + (σ² + μ²)/(2σ_p²) − ½."""
        std = self.A_std().clamp(min=1e-12)
        return (
            math.log(prior_std) - torch.log(std) + (std.square() + self.lora_A.square()) / (2 * prior_std**2) - 0.5
        ).sum()

    def is_sampling(self) -> bool:
        return self.training if self.sampling is None else bool(self.sampling)

    def flipout_noise(self, x: torch.Tensor) -> torch.Tensor:
        """((x ∘ r) Eᵀ) ∘ t with sign vectors r, t drawn per row, then E = G² ∘ ε shared by the pass.

        The draws are the authors' (``modelwrappers/blob.py``): the signs as ``uniform_(-1, 1).sign()``,
        in the order r, t, ε, so a seeded pass draws the same noise as their layer. ``bernoulli_`` would
        draw the same distribution (up to a sign of 0 with probability 2⁻²⁴ per entry in float32, which
        theirs has too) at about twice the cost of the low-rank matmul (``bench cost --layers``).
        """
        sign_in = torch.empty_like(x).uniform_(-1, 1).sign_()  # r [..., d_in]
        sign_out = torch.empty((*x.shape[:-1], self.r), device=x.device, dtype=x.dtype).uniform_(-1, 1).sign_()  # t
        noise = self.A_std() * torch.randn_like(self.lora_A_std_sqrt)  # E [r, d_in]
        return ((x * sign_in) @ noise.T) * sign_out  # [..., r]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        h = x.to(self.lora_A.dtype)
        z = h @ self.lora_A.T  # [..., r]
        if self.is_sampling():
            z = z + self.flipout_noise(h)
        return out + (self.scaling * (z @ self.lora_B.T)).to(out.dtype)


def blob_layers(model: nn.Module) -> dict[str, BLoBLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BLoBLinear)}


def kl_weight(step: int, cycle: int) -> float:
    """π_i = 2^i / (2^{K+1} − 1) for the i-th step (1-based) of a K-step cycle, in floats that cannot overflow."""
    i = step % cycle or cycle
    return 2.0 ** (i - cycle - 1) / (1.0 - 2.0 ** (-(cycle + 1)))


class BLoB(MethodBase):
    """Bayesian LoRA trained by backprop: Gaussian posterior on A, flipout, closed-form KL, MC predictive."""

    name = "blob"
    description = "BLoB: Gaussian posterior on LoRA's A (flipout, closed-form KL, cyclic KL weights), MC predictive"
    Params = BLoBParams
    sampled_predictive = posterior_params = True

    def __init__(self, **hyper_params) -> None:
        super().__init__(**hyper_params)
        self.kl_cycle = 1
        self.steps_per_epoch = 1
        self.last_kl = 0.0

    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel:
        if plan.train.mixed_precision == "fp16":
            raise LRVDError("blob does not support mixed_precision=fp16 (use bf16 or no)")
        self.spec, self.plan = spec, plan
        layers = replace_modules(
            model.backbone,
            spec.target_modules,
            lambda base: BLoBLinear(base, spec.r, spec.scaling, self.params.init_eps),
        )
        keep = {id(t) for layer in layers.values() for t in (layer.lora_A, layer.lora_A_std_sqrt, layer.lora_B)}
        freeze_all_but(model, keep | {id(t) for t in model.head_parameters()})
        batch = plan.train.batch_size * plan.train.grad_accum
        self.steps_per_epoch = max(1, math.ceil(plan.n_train / batch))
        self.kl_cycle = max(1, int(100 * plan.n_train ** (math.pi / self.params.gamma) / batch))
        return model

    def param_groups(self, model, plan):
        """AdamW gets M, B and the head; the stds G are updated by the SGD step of ``on_step_end``."""
        stds = {id(layer.lora_A_std_sqrt) for layer in blob_layers(model).values()}
        groups = super().param_groups(model, plan)
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in stds]
        return [g for g in groups if g["params"]]

    def kl(self, model) -> torch.Tensor:
        return sum(layer.kl(self.params.prior_std) for layer in blob_layers(model).values())

    def kl_weight(self, step: int) -> float:
        return kl_weight(step, self.kl_cycle) if self.params.kl_reweighting else 1.0 / self.steps_per_epoch

    def kl_lr(self, step: int) -> float:
        """``kl_lr`` under the same linear warm-up/decay as the main learning rate (BLoB's scheduler2)."""
        total = self.plan.total_steps
        warmup = int(round(total * self.plan.train.warmup_ratio))
        if warmup and step < warmup:
            return self.params.kl_lr * (step + 1) / warmup
        return self.params.kl_lr * max(0.0, (total - step) / max(1, total - warmup))

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        """SGD on G (its NLL gradient + π ∂KL/∂G) and on M (π ∂KL/∂M), as BLoB's second optimizer."""
        layers = list(blob_layers(model).values())
        means = [layer.lora_A for layer in layers]
        stds = [layer.lora_A_std_sqrt for layer in layers]
        pi = self.kl_weight(step)
        kl = self.kl(model)
        kl_grads = torch.autograd.grad(pi * kl, means + stds)
        lr = self.kl_lr(step - 1)
        std_ids = {id(p) for p in stds}
        finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in stds)
        if finite and lr > 0:
            with torch.no_grad():
                for p, g in zip(means + stds, kl_grads):
                    nll_grad = p.grad if id(p) in std_ids and p.grad is not None else 0.0
                    p.sub_(lr * (g + nll_grad))
        for p in stds:
            p.grad = None
        self.last_kl = float(kl.detach())
        return {"kl": self.last_kl, "kl_weight": pi}

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        n = self.params.n_samples if n_samples is None else int(n_samples)
        if n < 0:
            raise LRVDError(f"n_samples must be >= 0, got {n}")
        layers = list(blob_layers(model).values())
        saved = [layer.sampling for layer in layers]
        try:
            for layer in layers:
                layer.sampling = n > 0
            if n == 0:
                return torch.softmax(model(batch).float(), dim=-1)
            with seeded(sample_seed(), model_device(model)):
                return mean_softmax(lambda: model(batch), n)
        finally:
            for layer, s in zip(layers, saved):
                layer.sampling = s

    def rank_report(self, model) -> dict[str, int]:
        return {name: layer.r for name, layer in blob_layers(model.backbone).items()}

    def peft_export(self, model):
        """Posterior mean (M, B) as a plain peft LoRA; the stds G go to the sidecar."""
        from lrvd.adapter_io import LoraFactors, lora_export, native_names

        names = native_names(model)
        return lora_export(
            model,
            {
                n: LoraFactors(
                    m.lora_A, m.lora_B, m.scaling, m.fan_in_fan_out, names[id(m.lora_A)], names[id(m.lora_B)]
                )
                for n, m in blob_layers(model.backbone).items()
            },
        )

    def parameter_counts(self, model) -> dict[str, int]:
        """``variational`` = the stds G, one per entry of A."""
        return {
            "trainable": count_parameters(model),
            "variational": sum(layer.lora_A_std_sqrt.numel() for layer in blob_layers(model).values()),
        }
