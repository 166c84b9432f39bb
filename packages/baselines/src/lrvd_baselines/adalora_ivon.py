"""AdaLoRA-IVON (Chen & Garner, arXiv 2409.10673): AdaLoRA whose importance comes from IVON's posterior.

Training uses the IVON optimizer (Shen et al., ICML 2024; the ``ivon-opt`` package, used as a
dependency): each step draws ``θ ~ q = N(μ, σ²)`` (:meth:`step_context` wraps forward + backward in
``sampled_params(train=True)``), with per-weight ``σ = 1/√(ess·(h + δ))`` from IVON's Hessian
estimate ``h``, effective sample size ``ess`` and weight decay ``δ`` of the weight's parameter group.
AdaLoRA's schedule, budget and masking are unchanged (:class:`~lrvd_baselines.adalora.AdaLoRA`);
only the element score ``s(w)`` is replaced, computed from ``(μ, σ)`` at masking steps only — no
``|w·∂L/∂w|`` pass and no EMA bookkeeping, which is where the paper's speed-up comes from.

Criteria (``criterion``):
- ``snr-abs`` (default): SNR of the *magnitude* ``|θ|``, θ ~ N(μ, σ²) — the folded normal's
  ``E|θ| / sd|θ|`` with ``E|θ| = σ√(2/π)·exp(−μ²/2σ²) + μ(1 − 2Φ(−μ/σ))`` and
  ``Var|θ| = μ² + σ² − E|θ|²``;
- ``snr``: ``|μ|/σ``;  ``mean``: ``|μ|`` (the paper's finding: magnitude dominates);  ``inv-sigma``: ``1/σ``.

Optimiser defaults are the authors' (idiap/vilora ``run_glue_no_trainer.py`` argparse defaults and
GLUE scripts): lr 0.4 with linear decay, ``clip_radius`` 1e-3, weight decay 1e-8, hess_init 1,
β2 0.99999, ``ess`` = training-set size; ``lr_first`` switches on their small-task two-phase
schedule. Each default's source and every deviation: ``docs/methods.md`` (AdaLoRA-IVON).

Prediction (``predictive``):
- ``mean`` (default, the authors' evaluation): the posterior-mean model, deterministic;
- ``mc-logits`` (the authors' optional MC evaluation): average of the *logits* of ``n_samples``
  posterior draws, noise on every IVON-trained weight including masked triplets, then softmax;
- ``bma``: Bayesian model average of ``n_samples`` softmaxes with masked triplets noise-free,
  so pruned ranks stay pruned in every sample (the BLoB/IVON papers' probability averaging).

The shared loop draws one posterior sample per optimizer step (IVON's ``mc_samples = 1``, as
vilora); its gradient clipping does not reach IVON, which reads the gradients when
``sampled_params`` exits (vilora clips none either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lrvd.errors import LRVDError, check_each, unknown_choice
from lrvd.protocol import linear_warmup_decay
from lrvd.sample_record import record_samples
from lrvd_baselines.adalora import COLA_TOTAL_STEPS, AdaLoRA, AdaLoRAParams, ExactBudgetRankAllocator
from lrvd_baselines.peft_adapters import (
    ADAPTER_NAME,
    adapter_layers,
    mean_softmax,
    model_device,
    peft_root,
    seeded,
)

CRITERIA = ("snr-abs", "snr", "mean", "inv-sigma")
PREDICTIVES = ("mean", "mc-logits", "bma")
STD_PREFIX = "ivon_std."


@dataclass
class AdaLoRAIVONParams(AdaLoRAParams):
    criterion: str = field(default="snr-abs", metadata={"help": "importance: snr-abs | snr | mean | inv-sigma"})
    lr: float = field(default=0.4, metadata={"help": "IVON learning rate (IVON scale; vilora large-GLUE scripts: 0.4)"})
    head_lr: float | None = field(
        default=None,
        metadata={"help": "IVON lr of the task head (default: lr × train.head_lr / train.lr; vilora: one lr for all)"},
    )
    lr_first: float | None = field(
        default=None,
        metadata={
            "help": "vilora small-task schedule: after warm-up hold this lr for first_phase of the run, "
            "then drop to lr and decay linearly (CoLA/STS-B/MRPC/RTE scripts: 2.0); None: linear"
        },
    )
    first_phase: float = field(
        default=500 / COLA_TOTAL_STEPS,
        metadata={"help": "fraction of the run at lr_first (vilora CoLA script: 500 of 6700 steps)"},
    )
    clip_radius: float = field(
        default=1e-3, metadata={"help": "IVON clip radius of the preconditioned step (vilora default 1e-3)"}
    )
    ess: float | None = field(
        default=None, metadata={"help": "IVON effective sample size (default: the training-set size n_train)"}
    )
    hess_init: float = field(default=1.0, metadata={"help": "IVON initial Hessian (sets the initial σ; vilora: 1)"})
    ivon_beta1: float = field(default=0.9, metadata={"help": "IVON gradient momentum (vilora: 0.9)"})
    ivon_beta2: float = field(default=0.99999, metadata={"help": "IVON Hessian momentum (vilora: 0.99999)"})
    weight_decay: float = field(
        default=1e-8, metadata={"help": "IVON weight decay δ (> 0: prior precision; vilora: 1e-8)"}
    )
    predictive: str = field(
        default="mean",
        metadata={
            "help": "mean (authors' default: posterior mean) | mc-logits (authors' MC: mean logits, "
            "masked triplets noisy too) | bma (mean of softmaxes, masked triplets noise-free)"
        },
    )
    n_samples: int = field(default=10, metadata={"help": "posterior samples of mc-logits / bma (0: posterior mean)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in CRITERIA:
            raise unknown_choice("AdaLoRA-IVON criterion", self.criterion, CRITERIA)
        if self.predictive not in PREDICTIVES:
            raise unknown_choice("AdaLoRA-IVON predictive", self.predictive, PREDICTIVES)
        check_each(self, "> 0", ("lr", "hess_init", "weight_decay", "clip_radius"), lambda v: v > 0)
        if self.head_lr is not None and self.head_lr <= 0:
            raise LRVDError(f"head_lr must be > 0, got {self.head_lr}")
        if self.lr_first is not None and self.lr_first <= 0:
            raise LRVDError(f"lr_first must be > 0, got {self.lr_first}")
        if not 0.0 <= self.first_phase < 1.0:
            raise LRVDError(f"first_phase is a fraction of the run in [0, 1), got {self.first_phase}")
        if self.ess is not None and self.ess <= 0:
            raise LRVDError(f"ess must be > 0, got {self.ess}")
        check_each(self, "in [0, 1)", ("ivon_beta1",), lambda v: 0 <= v < 1)
        check_each(self, "in (0, 1)", ("ivon_beta2",), lambda v: 0 < v < 1)
        if self.n_samples < 0:
            raise LRVDError(f"n_samples must be >= 0, got {self.n_samples}")


def two_phase_schedule(optimizer, total_steps: int, warmup_ratio: float, first_factor: float, first_phase: float):
    """vilora's small-task schedule, as factors of each group's lr.

    Linear warm-up to ``first_factor`` over ``warmup_ratio`` of the run, held until ``first_phase``
    of the run, then a drop to 1 and linear decay to 0 at the end.
    """
    warmup = int(round(total_steps * warmup_ratio))
    hold = max(warmup, int(round(total_steps * first_phase)))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return first_factor * (step + 1) / warmup
        if step < hold:
            return first_factor
        return max(0.0, (total_steps - step) / max(1, total_steps - hold))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def posterior_std(optimizer: torch.optim.Optimizer) -> dict[torch.nn.Parameter, torch.Tensor]:
    """σ = 1/√(ess·(h + δ)) per parameter, slicing each group's flat ``hess`` by ``numel``."""
    stds = {}
    for group in optimizer.param_groups:
        offset = 0
        for p in group["params"]:
            h = group["hess"][offset : offset + p.numel()].view_as(p)
            stds[p] = torch.rsqrt(group["ess"] * (h + group["weight_decay"]))
            offset += p.numel()
    return stds


def importance(criterion: str, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Element score of a weight with posterior N(μ, σ²) (computed in float64, returned as μ's dtype)."""
    m, s = mu.double(), sigma.double()
    if criterion == "mean":
        score = m.abs()
    elif criterion == "inv-sigma":
        score = 1.0 / s
    elif criterion == "snr":
        score = m.abs() / s
    elif criterion == "snr-abs":
        normal_cdf = 0.5 * torch.erfc((m / s) / math.sqrt(2.0))  # Φ(−μ/σ)
        folded_mean = s * math.sqrt(2.0 / math.pi) * torch.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * normal_cdf)
        folded_var = (m**2 + s**2 - folded_mean**2).clamp(min=torch.finfo(torch.float64).tiny)
        score = folded_mean / folded_var.sqrt()
    else:
        raise unknown_choice("AdaLoRA-IVON criterion", criterion, CRITERIA)
    return score.to(mu.dtype)


class PosteriorRankAllocator(ExactBudgetRankAllocator):
    """AdaLoRA's allocator (exact budget) with the element score read from IVON's posterior when masking."""

    def __init__(self, model, peft_config, adapter_name, criterion: str):
        super().__init__(model, peft_config, adapter_name)
        self.criterion = criterion
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: dict[str, torch.nn.Parameter] = {}
        self.stds: dict[torch.nn.Parameter, torch.Tensor] = {}

    def update_ipt(self, model) -> None:
        """No per-step sensitivity: the posterior is IVON's state, read when masking."""

    def mask_to_budget(self, model, budget):
        if self.optimizer is None:
            raise RuntimeError("PosteriorRankAllocator needs the IVON optimizer (configure_optimizers binds it)")
        self.params = dict(model.named_parameters())
        self.stds = posterior_std(self.optimizer)
        try:
            return super().mask_to_budget(model, budget)
        finally:
            self.stds = {}

    def element_score(self, name: str) -> torch.Tensor:
        p = self.params[name]
        return importance(self.criterion, p.detach(), self.stds[p])


class AdaLoRAIVON(AdaLoRA):
    """AdaLoRA trained with IVON; ranks allocated by posterior SNR (or |μ|, 1/σ)."""

    name = "adalora-ivon"
    description = "AdaLoRA with IVON: rank allocation by posterior SNR (Chen & Garner 2024)"
    Params = AdaLoRAIVONParams
    posterior_params = True  # adaptive_rank, svd_triplets: from AdaLoRA
    sampled_predictive = False  # the default predictive (``mean``); an instance with mc-logits / bma sets True

    def __init__(self, **hyper_params: Any) -> None:
        super().__init__(**hyper_params)
        self.sampled_predictive = self.params.predictive != "mean"
        self.optimizer: torch.optim.Optimizer | None = None
        self._loaded_std: dict[str, torch.Tensor] = {}

    @property
    def default_n_samples(self) -> int:  # type: ignore[override]
        return 0 if self.params.predictive == "mean" else self.params.n_samples

    def make_allocator(self, model):
        root = peft_root(model)
        return PosteriorRankAllocator(
            root.model, root.peft_config[ADAPTER_NAME], root.trainable_adapter_name, self.params.criterion
        )

    def ivon_kwargs(self, plan) -> dict[str, Any]:
        """Keyword arguments of ``ivon.IVON`` (one place, so tests can check the wiring of each default)."""
        p = self.params
        return dict(
            lr=p.lr,
            ess=p.ess if p.ess is not None else plan.n_train,
            hess_init=p.hess_init,
            beta1=p.ivon_beta1,
            beta2=p.ivon_beta2,
            weight_decay=p.weight_decay,
            clip_radius=p.clip_radius,
        )

    def configure_optimizers(self, model, plan):
        import ivon

        p = self.params
        groups = self.param_groups(model, plan)
        for group in groups:  # keep the head/adapter lr ratio of the TrainConfig on IVON's scale
            is_head = model.is_head_parameter(group["params"][0])
            group["lr"] = p.head_lr if is_head and p.head_lr is not None else p.lr * group["lr"] / plan.train.lr
            group["weight_decay"] = p.weight_decay
        optimizer = ivon.IVON(groups, **self.ivon_kwargs(plan))
        peft_root(model).rankallocator.optimizer = optimizer
        self.optimizer = optimizer
        if p.lr_first is None:
            return optimizer, linear_warmup_decay(optimizer, plan.total_steps, plan.train.warmup_ratio)
        return optimizer, two_phase_schedule(
            optimizer, plan.total_steps, plan.train.warmup_ratio, p.lr_first / p.lr, p.first_phase
        )

    def step_context(self, optimizer):
        return optimizer.sampled_params(train=True)

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        logs = super().on_step_end(model, optimizer, step)
        hess = torch.cat([g["hess"].detach().float() for g in optimizer.param_groups])
        logs.update(
            hess_mean=float(hess.mean()),
            hess_median=float(hess.median()),
            hess_min=float(hess.min()),
            hess_max=float(hess.max()),
        )
        return logs

    # -- posterior prediction ------------------------------------------------------------------
    def posterior_stds(self, model) -> dict[str, torch.Tensor]:
        """Parameter name -> σ, from the live optimizer or a loaded adapter."""
        if self.optimizer is not None:
            by_param = posterior_std(self.optimizer)
            return {n: by_param[p] for n, p in model.named_parameters() if p in by_param}
        if self._loaded_std:
            return self._loaded_std
        raise LRVDError("adalora-ivon has no posterior yet: train the model or load a saved adapter")

    def noise_masks(self, model) -> dict[str, torch.Tensor]:
        """Parameter name -> 0/1 multiplier of the posterior noise: 0 on masked triplets."""
        masks = {}
        prefix = {id(layer): name for name, layer in adapter_layers(model).items()}
        keep_by_module = self.triplet_masks(model)
        for module_name, module in model.named_modules():
            if id(module) not in prefix:
                continue
            keep = keep_by_module[prefix[id(module)]].float()  # [r]
            for factor, shape in (("lora_E", keep[:, None]), ("lora_A", keep[:, None]), ("lora_B", keep[None, :])):
                masks[f"{module_name}.{factor}.{ADAPTER_NAME}"] = shape
        return masks

    def logit_samples(self, model, batch, n_samples: int, noise_on_masked: bool) -> list[torch.Tensor]:
        """``n_samples`` logits ``[batch, classes]`` under posterior draws of every IVON-trained weight.

        ``noise_on_masked=False`` zeroes the noise of masked triplets (λ_k, row k of Q, column k of P),
        so a pruned rank stays pruned; ``True`` perturbs them too, as IVON's ``sampled_params`` does.
        Seeded per call (:meth:`next_sample_seed`), so a reloaded adapter predicts identically.
        """
        stds = self.posterior_stds(model)
        masks = {} if noise_on_masked else self.noise_masks(model)
        params = [(p, stds[name] * masks.get(name, 1.0)) for name, p in model.named_parameters() if name in stds]
        means = [p.data for p, _ in params]
        samples = []
        try:
            with seeded(self.next_sample_seed(), model_device(model)):
                for _ in range(n_samples):
                    for (p, std), mu in zip(params, means):
                        p.data = mu + std * torch.randn_like(mu)
                    samples.append(model(batch).float())
        finally:
            for (p, _), mu in zip(params, means):
                p.data = mu
        return samples

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        """The ``predictive`` of the params (module docstring); ``mean`` ignores ``n_samples``."""
        mode = self.params.predictive
        n = 0 if mode == "mean" else self.resolve_n_samples(n_samples)
        if n == 0:
            return super().predict_proba(model, batch)
        if mode == "mc-logits":
            logits = torch.stack(self.logit_samples(model, batch, n, noise_on_masked=True))
            record_samples(torch.softmax(logits, dim=-1))  # the draws; the predictive softmaxes their mean logit
            return torch.softmax(logits.mean(dim=0), dim=-1)
        samples = iter(self.logit_samples(model, batch, n, noise_on_masked=False))
        return mean_softmax(lambda: next(samples), n)

    def parameter_counts(self, model) -> dict[str, int]:
        """``variational``: one posterior variance (IVON Hessian entry) per trainable weight."""
        counts = super().parameter_counts(model)
        counts["variational"] = counts["trainable"]
        return counts

    # -- persistence -----------------------------------------------------------------------------
    def peft_export(self, model):
        """Posterior mean as a plain peft LoRA of the kept triplets: A = Q[kept], B = P[:, kept]·diag(λ[kept]),
        scaling = lora_alpha / ranknum (AdaLoRA's); the SVD factors and σ's go to the sidecar."""
        from lrvd.adapter_io import LoraFactors, lora_export

        masks = self.triplet_masks(model)
        modules = {}
        with torch.no_grad():
            for name, layer in adapter_layers(model).items():
                keep = masks[name]
                e = layer.lora_E[ADAPTER_NAME][keep, 0]  # [k]
                scaling = float(layer.scaling[ADAPTER_NAME]) / float(layer.ranknum[ADAPTER_NAME] + 1e-5)
                modules[name] = LoraFactors(
                    layer.lora_A[ADAPTER_NAME][keep],
                    layer.lora_B[ADAPTER_NAME][:, keep] * e,
                    scaling,
                    bool(getattr(layer, "fan_in_fan_out", False)),
                )
        if not any(f.A.shape[0] for f in modules.values()):
            return None
        return lora_export(model, modules)

    def training_state(self, model):
        """AdaLoRA's state plus IVON's step counter, which its momentum debiasing reads and which ivon-opt
        keeps outside ``state_dict``."""
        return {**super().training_state(model), "ivon_step": int(self.optimizer.current_step)}

    def load_training_state(self, model, state) -> None:
        state = dict(state)
        self.optimizer.current_step = state.pop("ivon_step")
        super().load_training_state(model, state)

    def extra_state(self, model):
        tensors, config = super().extra_state(model)
        tensors.update({STD_PREFIX + n: s for n, s in self.posterior_stds(model).items()})
        return tensors, config

    def load_extra_state(self, model, tensors, config) -> None:
        super().load_extra_state(model, tensors, config)
        self._loaded_std = {k[len(STD_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STD_PREFIX)}
        self.optimizer = None
