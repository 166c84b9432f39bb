"""LoRA ensemble (deep ensemble of LoRA adapters; "ENS" in BLoB's Table 1, Lakshminarayanan et al. 2017).

``n_members`` (M, default 3 as ``--ensemble-n`` in bayesian-peft) independently initialised LoRA
adapters live on one frozen backbone as named peft adapters (``member0`` … ``member{M-1}``); every
member also has **its own task head** (peft ``modules_to_save`` copies of the fresh head; member 0
keeps the loader's head, member k ≥ 1 redraws each head weight matrix from N(0, std of the original)
with its own seed, i.e. the usual transformers head init). Per-member LoRA init uses seed
``1000·seed + k``. So every member is a complete LoRA classifier, exactly what an independent
``lora`` run would train, and the trainable count is M × LoRA's (adapters + head).

Training: one loop; each forward runs the M members one after another (switching the active peft
adapter) and :meth:`training_loss` sums their cross-entropies, so each member receives the gradient
it would get alone. Differences from M separate runs: the data order is shared, and gradient
clipping acts on the joint norm. Cost: M× compute and M× activation memory per step, M× adapter
memory; prediction is M forward passes.

Predictive: the mean of member softmaxes (:func:`ensemble_probs`); ``average = "logits"`` instead
takes softmax of the mean logits, which is what bayesian-peft's ``deepensemble.py`` evaluates.

Reusing trials: :func:`ensemble_from_trials` builds the same predictive from M already-run ``lora``
trials that differ only in their seed, at zero extra training cost (the bench's cheap path).
Defaults and deviations: docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrvd.classifier import ClassifierModel, count_parameters, freeze_all_but
from lrvd.errors import LRVDError, unknown_choice
from lrvd.protocol import AdapterConfig, TrainPlan
from lrvd.sample_record import is_recording, record_samples
from lrvd_baselines.lora import LoRA, LoRAParams
from lrvd_baselines.peft_adapters import adapter_layers, model_device, seeded

AVERAGES = ("probs", "logits")


def ensemble_probs(member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble predictive ``(1/M) Σ_m p_m`` of member probabilities, each ``[N, n_classes]``."""
    if not member_probs:
        raise LRVDError("an ensemble needs at least one member")
    shapes = {tuple(p.shape) for p in member_probs}
    if len(shapes) != 1:
        raise LRVDError(f"ensemble members disagree in shape: {sorted(shapes)}")
    return torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in member_probs]).mean(0)


def ensemble_from_trials(
    trial_rows: Sequence[Mapping[str, Any]],
    predictions_by_trial: Mapping[str, tuple[Any, Any]],
    m: int,
    *,
    method: str = "lora",
    group_by: Sequence[str] = ("task", "model", "search_point"),
) -> list[dict[str, Any]]:
    """Ensembles of ``m`` finished trials of ``method`` that differ only in their seed.

    ``trial_rows`` are result rows (``trial_id``, ``method``, ``seed``, ``status`` and the
    ``group_by`` keys); ``predictions_by_trial`` maps a ``trial_id`` to its ``(probs [N, C], labels
    [N])`` (e.g. from ``predictions.npz``). Per group, the ``m`` ok trials with the smallest seeds are
    averaged with :func:`ensemble_probs`; groups with fewer than ``m`` such trials are skipped.
    Returns one dict per ensemble: the group keys, ``members`` (trial ids), ``seeds``, ``probs``
    ``[N, C]`` and ``labels`` ``[N]``; score it with :func:`lrvd.metrics.classification_metrics`.
    """
    if m < 1:
        raise LRVDError(f"ensemble size must be >= 1, got {m}")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in trial_rows:
        if row.get("method") == method and row.get("status", "ok") == "ok" and row["trial_id"] in predictions_by_trial:
            groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    out = []
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda r: int(r["seed"]))[:m]
        if len(rows) < m:
            continue
        preds = [predictions_by_trial[r["trial_id"]] for r in rows]
        labels = torch.as_tensor(preds[0][1])
        if any(not torch.equal(torch.as_tensor(p[1]), labels) for p in preds[1:]):
            raise LRVDError(f"trials {[r['trial_id'] for r in rows]} were evaluated on different examples")
        out.append(
            {
                **dict(zip(group_by, key)),
                "members": [r["trial_id"] for r in rows],
                "seeds": [int(r["seed"]) for r in rows],
                "probs": ensemble_probs([torch.as_tensor(p[0]) for p in preds]),
                "labels": labels,
            }
        )
    return out


@dataclass
class LoRAEnsembleParams(LoRAParams):
    n_members: int = field(default=3, metadata={"help": "ensemble size M (cost: M x training and prediction)"})
    average: str = field(
        default="probs", metadata={"help": "probs: mean softmax | logits: softmax of mean logits (bayesian-peft)"}
    )
    reuse_trials: bool = field(
        default=True,
        metadata={
            "help": "bench: build the ensemble from the sweep's own lora trials (>= M seeds) instead of retraining"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_members < 1:
            raise LRVDError(f"n_members must be >= 1, got {self.n_members}")
        if self.average not in AVERAGES:
            raise unknown_choice("ensemble average", self.average, AVERAGES)


def member_name(k: int) -> str:
    return f"member{k}"


def head_module_names(hf_model: nn.Module, head_ids: set[int]) -> list[str]:
    """The outermost modules whose parameters are all task-head parameters (``modules_to_save``)."""
    names = []
    for name, module in hf_model.named_modules():
        params = list(module.parameters())
        if name and params and all(id(p) in head_ids for p in params):
            if not any(name.startswith(n + ".") for n in names):
                names.append(name)
    return names


class LoRAEnsembleClassifier(ClassifierModel):
    """Runs the wrapped classifier once per member adapter.

    ``forward`` returns the ensemble's log-predictive ``[B, C]`` (so any caller sees one classifier)
    and keeps the per-member logits of that pass in ``member_logits`` ``[M, B, C]``, which the
    method's training loss reads — the auxiliary-output pattern of mixture-of-experts routers.
    """

    def __init__(self, inner: ClassifierModel, n_members: int, average: str = "probs") -> None:
        super().__init__(inner, inner.n_classes)
        self.n_members = n_members
        self.average = average
        self.member_logits: torch.Tensor | None = None
        self._trainable_ids: set[int] = set()

    def activate(self, k: int) -> None:
        """Make member k's adapter and head active; peft's ``set_adapter`` freezes the others, which
        would drop their gradients, so the trainable set is restored."""
        self.backbone.backbone.set_adapter(member_name(k))
        for p in self.parameters():
            if id(p) in self._trainable_ids:
                p.requires_grad_(True)

    def forward_members(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # [M, B, C]
        logits = []
        for k in range(self.n_members):
            self.activate(k)
            logits.append(self.backbone(batch))
        self.activate(0)
        return torch.stack(logits)

    def combine(self, member_logits: torch.Tensor) -> torch.Tensor:
        """Log of the ensemble predictive (softmax of it = the predictive)."""
        if self.average == "logits":
            return member_logits.float().mean(0)
        return torch.logsumexp(torch.log_softmax(member_logits.float(), -1), dim=0) - math.log(self.n_members)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.member_logits = self.forward_members(batch)
        return self.combine(self.member_logits)


class LoRAEnsemble(LoRA):
    """M independently seeded LoRA adapters (each with its own head) trained side by side; mean softmax."""

    name = "lora-ensemble"
    trains_like = "lora"  # its adapter is trained as LoRA's: selection reuses LoRA's chosen training settings
    description = "Ensemble of M independently seeded LoRA adapters + heads on one backbone (mean of softmaxes)"
    Params = LoRAEnsembleParams

    def member_seed(self, k: int) -> int:
        return 1000 * (self.plan.train.seed if self.plan is not None else 0) + k

    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel:
        from peft import get_peft_model

        self.spec, self.plan = spec, plan
        M = self.params.n_members
        head_ids = {id(p) for p in model.head_parameters()}
        head_modules = head_module_names(model.backbone, head_ids) or None
        device = model_device(model)
        try:
            for k in range(M):
                config = self.peft_config(spec, plan)
                config.modules_to_save = head_modules
                with seeded(self.member_seed(k), device):
                    if k == 0:
                        model.backbone = get_peft_model(model.backbone, config, adapter_name=member_name(0))
                    else:
                        model.backbone.add_adapter(member_name(k), config)
        except ValueError as err:
            raise LRVDError(f"cannot attach lora-ensemble: {str(err).splitlines()[0]}") from None
        members = {k: self._member_parameters(model, k) for k in range(M)}
        heads = [p for k in range(M) for n, p in members[k] if ".modules_to_save." in n]
        for k in range(1, M):
            self._redraw_head(members[k], self.member_seed(k))
        ensemble = LoRAEnsembleClassifier(model, M, self.params.average)
        trainable = {id(p) for k in range(M) for _, p in members[k]}
        freeze_all_but(ensemble, trainable)
        ensemble._trainable_ids = trainable
        ensemble.set_head_parameters(heads)
        ensemble.activate(0)
        return ensemble

    @staticmethod
    def _member_parameters(model: ClassifierModel, k: int) -> list[tuple[str, nn.Parameter]]:
        tag = member_name(k)
        return [(n, p) for n, p in model.backbone.named_parameters() if tag in n.split(".")]

    @staticmethod
    @torch.no_grad()
    def _redraw_head(params: list[tuple[str, nn.Parameter]], seed: int) -> None:
        """Weight matrices of the head copy ~ N(0, their std, i.e. the loader's head's); biases kept."""
        g = torch.Generator().manual_seed(seed)
        for name, p in params:
            if ".modules_to_save." not in name or p.ndim < 2:
                continue
            std = float(p.float().std())
            if std > 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def training_loss(self, model, batch, logits, step):
        """Σ_m CE(member m): each member gets exactly its own maximum-likelihood gradient."""
        labels = batch["labels"]
        nlls = [nn.functional.cross_entropy(member.float(), labels) for member in model.member_logits]
        loss = torch.stack(nlls).sum()
        return loss, {"nll": float(loss.detach()) / len(nlls)}

    @torch.no_grad()
    def member_probs(self, model: LoRAEnsembleClassifier, batch) -> torch.Tensor:  # [M, B, C]
        return torch.softmax(model.forward_members(batch).float(), dim=-1)

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        if is_recording():  # the members are the predictive's draws (one extra forward, only when asked)
            record_samples(self.member_probs(model, batch))
        return torch.softmax(model(batch), dim=-1)

    def peft_export(self, model):
        """One named peft LoRA adapter per member, each in its own folder with its own head
        (``PeftModel.from_pretrained(base, folder / "member0", adapter_name="member0")``)."""
        from lrvd.adapter_io import peft_model_export

        names = [member_name(k) for k in range(self.params.n_members)]
        return peft_model_export(model, model.backbone.backbone, names, folders={n: n for n in names}, head=False)

    def rank_report(self, model) -> dict[str, int]:
        return {name: int(layer.r[member_name(0)]) for name, layer in adapter_layers(model.backbone).items()}

    def parameter_counts(self, model) -> dict[str, int]:
        return {"trainable": count_parameters(model), "variational": 0}
