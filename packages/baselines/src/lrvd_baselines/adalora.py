"""AdaLoRA (Zhang et al., ICLR 2023): SVD-form adapters whose rank budget is pruned by sensitivity.

``ΔW = P Λ Q`` per module (peft ``AdaLoraConfig``); every ``ΔT`` steps between ``t_i`` and
``T − t_f`` the triplets with the lowest importance ``S_k = s(λ_k) + mean_j s(P_jk) +
mean_j s(Q_kj)``, ``s = Ī·Ū`` (EMAs of ``|w·∂L/∂w|``, β1 = β2 = 0.85), are masked so that the total
rank follows the cubic budget ``b(t)`` from ``init_r`` per module down to the target budget
(paper §3.2–3.3). Every default and its source: ``docs/methods.md`` (AdaLoRA).

Choices (documented there):
- ``init_r = spec.r``; target ``target_r = round(2/3 · init_r)`` per module (the paper's
  ``b(0) = 1.5 · b(T)``), or, with ``budget_total_rank``, exactly that many triplets in total.
- ``tinit``, ``tfinal`` and ``deltaT`` are *fractions of the run*, so one setting means the same
  schedule at 100 steps and at 6,700 (defaults: the official CoLA script's 800, 3500 and 10 of
  its 6,700 steps).
- Masking keeps exactly ``b(t)`` triplets: peft masks every triplet whose score is ``≤`` the
  k-th smallest, so tied scores can prune far below the budget (all of it when every score is
  equal); :class:`ExactBudgetRankAllocator` ranks by (score, position) instead.
- The orthogonality regulariser ``R = mean_modules(‖PᵀP − I‖_F, ‖QQᵀ − I‖_F)`` (peft's form, weight
  0.1 as in the paper) is added in :meth:`AdaLoRA.training_loss`, because our loss is computed
  outside the HF model and peft only adds it when ``labels`` are passed to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.adalora.layer import RankAllocator
from torch import nn

from lrvd.errors import LRVDError, check_each
from lrvd.protocol import AdapterConfig, TrainPlan, linear_warmup_decay
from lrvd_baselines.peft_adapters import ADAPTER_NAME, PeftMethod, adapter_layers, adapter_module_name, peft_root

#: the official AdaLoRA CoLA script (DeBERTa-v3-base): 8551 examples / batch 32 × 25 epochs
COLA_TOTAL_STEPS = 6700


@dataclass
class AdaLoRAParams:
    target_r: int | None = field(
        default=None, metadata={"help": "final average rank per module (default: round(2/3 · spec.r))"}
    )
    budget_total_rank: int | None = field(
        default=None, metadata={"help": "final total rank over all modules (overrides target_r; budget matching)"}
    )
    tinit: float = field(
        default=800 / COLA_TOTAL_STEPS,
        metadata={"help": "fraction of the run before the first pruning (AdaLoRA CoLA script: 800 of 6700 steps)"},
    )
    tfinal: float = field(
        default=3500 / COLA_TOTAL_STEPS,
        metadata={"help": "fraction of the run at the final budget (AdaLoRA CoLA script: 3500 of 6700 steps)"},
    )
    deltaT: float = field(
        default=10 / COLA_TOTAL_STEPS,
        metadata={"help": "fraction of the run between budget allocations, at least 1 step (CoLA script: 10 of 6700)"},
    )
    beta1: float = field(default=0.85, metadata={"help": "EMA coefficient of the sensitivity"})
    beta2: float = field(default=0.85, metadata={"help": "EMA coefficient of the uncertainty"})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "orthogonality regulariser coefficient γ"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input (BayesLoRA bench: 0)"})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "AdamW adapter lr of this method (default: the shared train.lr); choose it on the validation split"
        },
    )
    head_bias_decay: bool = field(
        default=False,
        metadata={
            "help": "decay the head's biases too (the BayesLoRA GLUE bench's train_adalora: train.weight_decay on "
            "every adapter and head tensor); default: head biases at 0, as every method"
        },
    )

    def __post_init__(self) -> None:
        for name in ("target_r", "budget_total_rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LRVDError(f"{name} must be >= 1, got {value}")
        for name in ("tinit", "tfinal"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LRVDError(f"{name} is a fraction of the run in [0, 1), got {value}")
        if not 0.0 < self.deltaT <= 1.0:
            raise LRVDError(f"deltaT is a fraction of the run in (0, 1], got {self.deltaT}")
        if self.tinit + self.tfinal >= 1.0:
            raise LRVDError(f"tinit + tfinal must be < 1 (a budgeting phase), got {self.tinit} + {self.tfinal}")
        check_each(self, "in (0, 1)", ("beta1", "beta2"), lambda v: 0.0 < v < 1.0)
        if self.orth_reg_weight < 0:
            raise LRVDError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if self.lr is not None and self.lr <= 0:
            raise LRVDError(f"lr must be > 0, got {self.lr}")


def keep_top_budget(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Bool mask keeping exactly ``budget`` entries of ``scores`` (flat): the highest, ties by position.

    A stable descending sort puts tied scores in index order, so among equal scores the earlier
    triplets (sorted module name, then triplet index) are kept: deterministic, and never more or
    fewer than the budget.
    """
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices
    keep[order[: max(0, min(budget, scores.numel()))]] = True
    return keep


#: peft RankAllocator attributes that carry state from step to step (name -> tensor dicts)
ALLOCATOR_EMAS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class ExactBudgetRankAllocator(RankAllocator):
    """peft's RankAllocator (same scores, schedule and EMAs) that keeps exactly ``b(t)`` triplets.

    Triplet score as in peft / the paper: ``S_k = s(λ_k) + mean_j s(Q_kj) + mean_j s(P_jk)``.
    Subclasses change only :meth:`element_score`.
    """

    def element_score(self, name: str) -> torch.Tensor:
        """Per-element score of parameter ``name``: AdaLoRA's ``Ī·Ū``."""
        return self.exp_avg_ipt[name] * self.exp_avg_unc[name]

    def triplet_scores(self, model) -> dict[str, torch.Tensor]:
        """``lora_E`` parameter name -> ``[r]`` triplet scores."""
        suffix = f".{self.adapter_name}"
        scores: dict[str, torch.Tensor] = {}
        for n, _ in model.named_parameters():
            if n.endswith(f"lora_E{suffix}"):
                a_name, b_name = n.replace("lora_E", "lora_A"), n.replace("lora_E", "lora_B")
                scores[n] = (
                    self.element_score(n).view(-1)  # λ_k: [r, 1]
                    + self.element_score(a_name).mean(dim=1)  # Q: [r, d_in]
                    + self.element_score(b_name).mean(dim=0)  # P: [d_out, r]
                )
        return dict(sorted(scores.items()))

    def mask_to_budget(self, model, budget):
        scores = self.triplet_scores(model)
        keep_flat = keep_top_budget(torch.cat(list(scores.values())), budget)
        params = dict(model.named_parameters())
        rank_pattern, offset = {}, 0
        with torch.no_grad():
            for n, s in scores.items():
                keep = keep_flat[offset : offset + s.numel()]
                offset += s.numel()
                params[n].masked_fill_(~keep.view(-1, 1), 0.0)
                rank_pattern[n] = keep.tolist()
        return rank_pattern


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

    def schedule(self, spec: AdapterConfig, plan: TrainPlan) -> dict[str, int]:
        """Steps ``tinit``, ``tfinal``, ``deltaT`` of ``plan.total_steps``; an LRVDError if no budgeting phase.

        peft scores importance after steps 1 … ``total − tfinal − 1`` and masks to the final budget after
        step ``total − tfinal``: that step must come after ``tinit`` and after at least one scored step,
        or the mask reads importance that was never computed.
        """
        p, total = self.params, plan.total_steps
        tinit, tfinal = int(round(p.tinit * total)), int(round(p.tfinal * total))
        if not max(tinit, 1) < total - tfinal:
            raise LRVDError(
                f"AdaLoRA schedule has no budgeting phase at {total} steps: max(tinit, 1) = {max(tinit, 1)} must be "
                f"< total_steps - tfinal = {total} - {tfinal}; lower the tinit/tfinal fractions or train longer"
            )
        delta = max(1, int(round(p.deltaT * total)))
        return {"tinit": tinit, "tfinal": tfinal, "deltaT": delta, "total_step": total}

    def check_plan(self, spec: AdapterConfig, plan: TrainPlan | None) -> None:
        """A target rank below the initial one, and a budgeting phase at the plan's steps (:meth:`schedule`)."""
        self.target_rank(spec)
        if plan is not None:
            self.schedule(spec, plan)

    def target_rank(self, spec: AdapterConfig) -> int:
        target = self.params.target_r if self.params.target_r is not None else max(1, round(2 * spec.r / 3))
        if target >= spec.r and self.params.budget_total_rank is None:
            raise LRVDError(f"AdaLoRA target_r ({target}) must be < the initial rank spec.r ({spec.r})")
        return target

    def peft_config(self, spec: AdapterConfig, plan: TrainPlan):
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
        """peft's sensitivity scores with exact-budget masking (AdaLoRA-IVON swaps the scores)."""
        root = peft_root(model)
        return ExactBudgetRankAllocator(root.model, root.peft_config[ADAPTER_NAME], root.trainable_adapter_name)

    def param_groups(self, model, plan):
        """Every method's groups; with ``head_bias_decay`` the head's 1-D tensors decay too."""
        groups = super().param_groups(model, plan)
        if self.params.head_bias_decay:
            for group in groups:
                if model.is_head_parameter(group["params"][0]):
                    group["weight_decay"] = plan.train.weight_decay
        return groups

    def configure_optimizers(self, model, plan):
        """AdamW as every method, with this method's own adapter ``lr`` when set (head keeps ``head_lr``)."""
        groups = self.param_groups(model, plan)
        for group in groups:
            if self.params.lr is not None and not model.is_head_parameter(group["params"][0]):
                group["lr"] = self.params.lr
        optimizer = torch.optim.AdamW(groups)
        return optimizer, linear_warmup_decay(optimizer, plan.total_steps, plan.train.warmup_ratio)

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

    def training_state(self, model) -> dict[str, Any]:
        """Plain attributes plus the allocator's sensitivity and uncertainty EMAs (the next allocation reads them)."""
        allocator = peft_root(model).rankallocator
        emas = {key: dict(getattr(allocator, key)) for key in ALLOCATOR_EMAS}
        return {**super().training_state(model), "allocator": emas}

    def load_training_state(self, model, state) -> None:
        state = dict(state)
        allocator = peft_root(model).rankallocator
        for key, values in state.pop("allocator", {}).items():
            setattr(allocator, key, dict(values))
        super().load_training_state(model, state)
