"""BayesLoRA on any Hugging Face model, the way ``peft.get_peft_model`` works.

::

    import lrvd
    model = AutoModelForSequenceClassification.from_pretrained(...)
    model = lrvd.get_bayeslora_model(model, lrvd.BayesLoraConfig(target_modules=["query", "value"],
                                                                 modules_to_save=["classifier"]))
    loss = model(**batch).loss + lrvd.kl_loss(model)          # the scaled ELBO
    loss.backward(); optimizer.step()
    lrvd.bayeslora_step(model, step, optimizer)                # prune ranks with log α ≥ τ when due
    probs = lrvd.predict_proba(model, batch, n_samples=10)     # posterior predictive [batch, classes]

or train with :class:`lrvd.hf_trainer.BayesLoraTrainer` (a ``transformers.Trainer`` that adds the KL,
prunes during training and logs the effective rank).

:func:`get_bayeslora_model` modifies the model in place and returns it: its forward and output type
are the model's own (only the adapted linear layers change). Only the LRVD adapter parameters and the
modules named in ``modules_to_save`` (peft's suffix semantics) require grad; everything else is
frozen. The objective, pruning rule and predictive are BayesLoRA's (see docs/methods.md, BayesLoRA).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lrvd import pruning
from lrvd.errors import LRVDError, unknown_choice
from lrvd.inject import inject_lrvd, lrvd_modules, matches_target, mc_predict_proba, set_sampling
from lrvd.layers import VARIANTS, total_kl

CONFIG_ATTR = "bayeslora_config"


@dataclass
class BayesLoraConfig:
    """Where the adapters go and BayesLoRA's knobs.

    Defaults are the ``bayeslora`` method's under its default ``llm-scripts`` protocol (the authors'
    LLaMA/GPT scripts: local reparameterisation, pruning every 200 steps); docs/methods.md lists them.
    """

    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    r: int = 8
    lora_alpha: float = 16.0
    #: modules trained in full besides the adapters, e.g. a new task head (peft's ``modules_to_save``)
    modules_to_save: list[str] | None = None
    kl_scale: float = 1e-6
    tau: float = 3.0
    prune_every: int = 200
    prune_start: int = 0
    min_ranks: int = 0
    n_samples: int = 5
    init_log_sigma2: float = -8.0
    variant: str = "factor"
    local_reparam: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if not self.target_modules:
            raise LRVDError("BayesLoraConfig.target_modules must name at least one module")
        if self.r < 1:
            raise LRVDError(f"BayesLoraConfig.r must be >= 1, got {self.r}")
        if self.variant not in VARIANTS:
            raise unknown_choice("BayesLoRA variant", self.variant, VARIANTS)
        for name in ("kl_scale", "prune_every", "prune_start", "min_ranks", "n_samples"):
            if getattr(self, name) < 0:
                raise LRVDError(f"BayesLoraConfig.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_bayeslora_model(model: nn.Module, config: BayesLoraConfig | None = None) -> nn.Module:
    """Put LRVD adapters on ``config.target_modules`` of ``model`` and freeze everything else.

    Raises :class:`LRVDError` with the model's linear module names when no target matches.
    """
    config = config or BayesLoraConfig()
    if lrvd_modules(model):
        raise LRVDError("the model already has BayesLoRA adapters (get_bayeslora_model was applied twice)")
    layers = inject_lrvd(
        model,
        config.target_modules,
        config.r,
        config.scaling,
        init_log_sigma2=config.init_log_sigma2,
        variant=config.variant,
        local_reparam=config.local_reparam,
    )
    keep = {id(t) for layer in layers.values() for t in (layer.A_mu, layer.B_mu, layer.rank_log_sigma2)}
    saved_modules = config.modules_to_save or []
    matched = set()
    for name, module in model.named_modules():
        if saved_modules and matches_target(name, saved_modules):
            matched.add(name)
            keep |= {id(p) for p in module.parameters()}
    if saved_modules and not matched:
        raise LRVDError(f"no module matches modules_to_save={saved_modules}")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    setattr(model, CONFIG_ATTR, config)
    return model


def bayeslora_config(model: nn.Module) -> BayesLoraConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise LRVDError("the model has no BayesLoRA adapters; call lrvd.get_bayeslora_model(model, config) first")
    return config


def kl_loss(model: nn.Module, scale: float | None = None) -> torch.Tensor:
    """``kl_scale · Σ_modules KL(q ‖ log-uniform)``: add it to the task loss (the scaled ELBO)."""
    scale = bayeslora_config(model).kl_scale if scale is None else scale
    return scale * total_kl(model)


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as peft's ``print_trainable_parameters``."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def bayeslora_step(model: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """The step hook: call after ``optimizer.step()`` with the 1-based optimizer step. Every
    ``prune_every`` steps from ``prune_start`` on it removes the ranks with log α ≥ τ (patching the
    optimizer's parameters and moments in place) and returns the rank logs."""
    config = bayeslora_config(model)
    logs: dict[str, float] = {}
    if (
        config.prune_every > 0
        and step >= max(1, config.prune_start)
        and (step - config.prune_start) % config.prune_every == 0
    ):
        removed = pruning.prune_ranks(model, config.tau, config.min_ranks, optimizer)
        logs["pruned_ranks"] = float(sum(removed.values()))
    logs["effective_rank"] = float(pruning.effective_rank(model, config.tau))
    return logs


def rank_report(model: nn.Module) -> dict[str, int]:
    """Module name -> effective rank #{k : log α_k < τ}."""
    return pruning.rank_report(model, bayeslora_config(model).tau)


def output_logits(output: Any) -> torch.Tensor:
    """Logits of a model output: a tensor, a transformers ``ModelOutput`` (``.logits``) or a tuple."""
    if torch.is_tensor(output):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        logits = output[0]
    if logits is None:
        raise LRVDError(f"cannot find logits in a model output of type {type(output).__name__}")
    return logits


class _Logits(nn.Module):
    """``forward(inputs_dict) -> logits`` around an HF model, for :func:`lrvd.inject.mc_predict_proba`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return output_logits(self.model(**inputs))


@torch.no_grad()
def predict_proba(
    model: nn.Module, inputs: Any, n_samples: int | None = None, *, chunk: int = 1, seed: int | None = None
) -> torch.Tensor:
    """Posterior predictive: mean of softmax over ``n_samples`` adapter-posterior draws (0: the mean
    model), over the last axis of the model's logits. ``inputs``: the model's keyword inputs (a dict
    or tokenizer ``BatchEncoding``; ``labels`` are ignored). ``chunk`` = samples per forward pass
    (1: a loop, safe for any model; 0: all at once on a replicated batch). ``seed`` makes the draws
    reproducible without touching the caller's RNG stream.
    """
    n = bayeslora_config(model).n_samples if n_samples is None else int(n_samples)
    if n < 0:
        raise LRVDError(f"n_samples must be >= 0, got {n}")
    batch = {k: v for k, v in dict(inputs).items() if k != "labels"}
    wrapper = _Logits(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    fork = (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        if seed is not None
        else contextlib.nullcontext()
    )
    try:
        with fork:
            if seed is not None:
                torch.manual_seed(seed)
            return mc_predict_proba(wrapper, batch, n, chunk)
    finally:
        model.train(was_training)


def set_posterior_sampling(model: nn.Module, on: bool | None) -> None:
    """True: sample in every forward; False: posterior means; None (default): sample iff training."""
    set_sampling(model, on)
