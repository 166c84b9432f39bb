"""AdaLoRA (Zhang et al., ICLR 2023): SVD-form adapters whose rank budget is pruned by sensitivity.

``ΔW = P Λ Q`` per module (peft ``AdaLoraConfig``); every ``deltaT`` steps between ``tinit`` and
``total − tfinal`` the triplets with the lowest importance ``S_k = s(λ_k) + mean_j s(P_jk) +
mean_j s(Q_kj)``, ``s = Ī·Ū`` (EMAs of ``|w·∂L/∂w|``, β1 = β2 = 0.85), are masked so that the total
rank follows the cubic budget ``b(t)`` from ``init_r`` per module down to the target budget
(AdaLoRA paper §3.2–3.3; docs/methods.md, AdaLoRA).

Choices (documented defaults):
- ``init_r = spec.r``; target ``target_r = round(2/3 · init_r)`` per module (the paper sets
  ``b(0) = 1.5 · b(T)``), or, with ``budget_total_rank``, exactly that many triplets in total
  (the BayesLoRA GLUE bench matches AdaLoRA's final budget to BayesLoRA's total rank).
- Schedule as fractions of ``plan.total_steps`` so short runs still have a budgeting phase:
  ``tinit = 0.12·T`` and ``tfinal = 0.52·T`` (the official CoLA script: 800 and 3500 of ≈ 6,700
  steps), ``deltaT = clamp((T − tinit − tfinal) // 10, 1, 10)`` (official: 10). Integer overrides
  win. ``tinit < T − tfinal`` is checked before peft builds anything.
- The orthogonality regulariser ``R = mean_modules(‖PᵀP − I‖_F, ‖QQᵀ − I‖_F)`` (peft's form, weight
  0.1 as in the paper) is added in :meth:`training_loss`, because our loss is computed outside the
  HF model and peft only adds it when ``labels`` are passed to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError
from lrvd.protocol import AdapterSpec, TrainPlan
from lrvd_baselines.peft_adapters import ADAPTER_NAME, PeftMethod, adapter_layers, adapter_module_name, peft_root


@dataclass
class AdaLoRAParams:
    target_r: int | None = field(
        default=None, metadata={"help": "final average rank per module (default: round(2/3 · spec.r))"}
    )
    budget_total_rank: int | None = field(
        default=None, metadata={"help": "final total rank over all modules (overrides target_r; budget matching)"}
    )
    tinit: int | None = field(default=None, metadata={"help": "warm-up steps before pruning (default 0.12·T)"})
    tfinal: int | None = field(default=None, metadata={"help": "final steps at the target budget (default 0.52·T)"})
    deltaT: int | None = field(default=None, metadata={"help": "steps between budget allocations (default ≤ 10)"})
    tinit_ratio: float = field(default=0.12, metadata={"help": "tinit as a fraction of total steps"})
    tfinal_ratio: float = field(default=0.52, metadata={"help": "tfinal as a fraction of total steps"})
    beta1: float = field(default=0.85, metadata={"help": "EMA coefficient of the sensitivity"})
    beta2: float = field(default=0.85, metadata={"help": "EMA coefficient of the uncertainty"})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "orthogonality regulariser coefficient γ"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input (BayesLoRA bench: 0)"})

    def __post_init__(self) -> None:
        for name in ("target_r", "budget_total_rank", "deltaT"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LRVDError(f"{name} must be >= 1, got {value}")
        for name in ("tinit", "tfinal"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LRVDError(f"{name} must be >= 0, got {value}")
        if not (0.0 <= self.tinit_ratio < 1.0 and 0.0 <= self.tfinal_ratio < 1.0):
            raise LRVDError("tinit_ratio and tfinal_ratio must be in [0, 1)")
        if not (0.0 < self.beta1 < 1.0 and 0.0 < self.beta2 < 1.0):
            raise LRVDError("beta1 and beta2 must be in (0, 1)")
        if self.orth_reg_weight < 0:
            raise LRVDError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight}")


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Mean over the P (``lora_B``) and Q (``lora_A``) factors of ``‖PᵀP − I‖_F`` / ``‖QQᵀ − I‖_F``."""
    terms = []
    for layer in adapter_layers(model).values():
        a, b = layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]  # [r, d_in], [d_out, r]
        for gram in (a @ a.T, b.T @ b):
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    return torch.stack(terms).mean()


class AdaLoRA(PeftMethod):
    """AdaLoRA with peft's sensitivity-based RankAllocator, AdamW, deterministic prediction."""

    name = "adalora"
    description = "AdaLoRA (SVD adapters, sensitivity-based rank budget allocation)"
    Params = AdaLoRAParams
    adaptive_rank = svd_triplets = True

    def schedule(self, spec: AdapterSpec, plan: TrainPlan) -> dict[str, int]:
        """``tinit``, ``tfinal``, ``deltaT`` for ``plan.total_steps``; an LRVDError if no budgeting phase."""
        p, total = self.params, plan.total_steps
        tinit = p.tinit if p.tinit is not None else int(round(p.tinit_ratio * total))
        tfinal = p.tfinal if p.tfinal is not None else int(round(p.tfinal_ratio * total))
        if not tinit < total - tfinal:
            raise LRVDError(
                f"AdaLoRA schedule has no budgeting phase: tinit={tinit} must be < total_steps - tfinal "
                f"= {total} - {tfinal}; lower tinit/tfinal or train longer"
            )
        delta = p.deltaT if p.deltaT is not None else min(10, max(1, (total - tinit - tfinal) // 10))
        return {"tinit": tinit, "tfinal": tfinal, "deltaT": delta, "total_step": total}

    def target_rank(self, spec: AdapterSpec) -> int:
        target = self.params.target_r if self.params.target_r is not None else max(1, round(2 * spec.r / 3))
        if target >= spec.r and self.params.budget_total_rank is None:
            raise LRVDError(f"AdaLoRA target_r ({target}) must be < the initial rank spec.r ({spec.r})")
        return target

    def peft_config(self, spec: AdapterSpec, plan: TrainPlan):
        from peft import AdaLoraConfig

        p = self.params
        return AdaLoraConfig(
            init_r=spec.r,
            target_r=self.target_rank(spec),
            lora_alpha=spec.alpha,
            target_modules=list(spec.target_modules),
            lora_dropout=p.lora_dropout,
            beta1=p.beta1,
            beta2=p.beta2,
            orth_reg_weight=p.orth_reg_weight,
            **self.schedule(spec, plan),
        )

    def attach(self, model, spec, plan):
        schedule = self.schedule(spec, plan)  # validate before building anything
        model = super().attach(model, spec, plan)
        allocator = self.make_allocator(model)
        root = peft_root(model)
        if self.params.budget_total_rank is not None:
            if not 1 <= self.params.budget_total_rank < allocator.init_bgt:
                raise LRVDError(
                    f"budget_total_rank must be in [1, {allocator.init_bgt}) (initial total rank), "
                    f"got {self.params.budget_total_rank}"
                )
            allocator.target_bgt = self.params.budget_total_rank
        root.rankallocator = allocator
        self.schedule_used = schedule
        return model

    def make_allocator(self, model):
        """peft's sensitivity allocator (AdaLoRA-IVON swaps in its posterior-based one)."""
        return peft_root(model).rankallocator

    def training_loss(self, model, batch, logits, step):
        nll = nn.functional.cross_entropy(logits.float(), batch["labels"])
        logs = {"nll": float(nll.detach())}
        if self.params.orth_reg_weight == 0:
            return nll, logs
        reg = orthogonality_penalty(model)
        logs["orth_reg"] = float(reg.detach())
        return nll + self.params.orth_reg_weight * reg, logs

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        """Update importance and mask to ``b(step)`` (peft's schedule; ``step`` counts from 1)."""
        peft_root(model).update_and_allocate(step)
        return {"rank_budget": float(sum(self.rank_report(model).values()))}

    # -- ranks -----------------------------------------------------------------------------------
    def rank_pattern(self, model) -> dict[str, list[bool]] | None:
        return peft_root(model).peft_config[ADAPTER_NAME].rank_pattern

    def rank_report(self, model) -> dict[str, int]:
        """Allocated rank per module: unmasked triplets of the last allocation (``init_r`` before)."""
        ranks = {name: int(layer.r[ADAPTER_NAME]) for name, layer in adapter_layers(model).items()}
        for param_name, keep in (self.rank_pattern(model) or {}).items():
            ranks[adapter_module_name(param_name)] = int(sum(bool(k) for k in keep))
        return ranks

    def triplet_masks(self, model) -> dict[str, torch.Tensor]:
        """Module name -> bool ``[r]``, True for kept triplets (all True before the first allocation)."""
        pattern = {adapter_module_name(k): v for k, v in (self.rank_pattern(model) or {}).items()}
        masks = {}
        for name, layer in adapter_layers(model).items():
            e = layer.lora_E[ADAPTER_NAME]
            keep = pattern.get(name)
            masks[name] = (
                torch.ones(e.shape[0], dtype=torch.bool, device=e.device)
                if keep is None
                else torch.tensor(keep, dtype=torch.bool, device=e.device)
            )
        return masks

    # -- persistence -----------------------------------------------------------------------------
    def extra_state(self, model) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pattern = self.rank_pattern(model)
        return {}, ({"rank_pattern": pattern} if pattern else {})

    def load_extra_state(self, model, tensors, config) -> None:
        if config.get("rank_pattern"):
            peft_root(model).peft_config[ADAPTER_NAME].rank_pattern = config["rank_pattern"]
