"""Laplace-LoRA (Yang et al., ICLR 2024): a post-hoc KFAC Laplace posterior over the LoRA weights.

Training is plain LoRA (MAP with the loop's weight decay). :meth:`after_training` fits upstream
laplace-torch ``Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")``
at the trained weights and tunes the prior precision by the marginal likelihood (default) or by
validation NLL grid search (``prior_tuning="gridsearch"``, needs :meth:`set_validation_loader`).

"LoRA-only" is enforced by freezing the task head while the Laplace object is built, fitted and
queried (laplace-torch takes every ``requires_grad`` parameter), so memory is bounded by the
adapter: Kronecker factors of size d_in² + r² (A) and r² + d_out² (B) per module.

Predictive (``predictive``): ``glm`` = linearised GLM with the probit link (deterministic; a
Jacobian per example: seconds per batch on CPU), ``nn`` = mean softmax of ``n_samples``
weight samples. ``auto`` (default) picks ``glm`` on CUDA and ``nn`` on CPU. Cost of
:meth:`after_training`: one extra pass over the training set with per-batch KFAC (≈ 5 s for 64
MiniLM examples on CPU) plus ≈ 0.2 s of prior tuning. The exact (type-2) KFAC backpropagates once
per class, so a fit costs ≈ C + 1 training epochs; ``fit_examples`` bounds it (see :func:`fit_on_subset`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError, unknown_choice
from lrvd.training import move_batch
from lrvd_baselines.lora import LoRA
from lrvd_baselines.peft_adapters import model_device, seeded

PREDICTIVES = ("auto", "glm", "nn")
TUNINGS = ("marglik", "gridsearch")
KFAC_PREFIX = "laplace.kfac."


@dataclass
class LaplaceLoRAParams:
    predictive: str = field(default="auto", metadata={"help": "auto | glm (probit) | nn (sampled); auto: glm on CUDA"})
    n_samples: int = field(default=10, metadata={"help": "weight samples of the nn predictive"})
    prior_tuning: str = field(default="marglik", metadata={"help": "marglik | gridsearch (validation NLL)"})
    prior_precision: float = field(default=1.0, metadata={"help": "initial prior precision"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout during training (paper: 0)"})
    fit_examples: int = field(
        default=0, metadata={"help": "KFAC on a seeded subset of this many training examples, rescaled to N (0: all)"}
    )

    def __post_init__(self) -> None:
        if self.predictive not in PREDICTIVES:
            raise unknown_choice("Laplace predictive", self.predictive, PREDICTIVES)
        if self.prior_tuning not in TUNINGS:
            raise unknown_choice("Laplace prior tuning", self.prior_tuning, TUNINGS)
        if self.n_samples < 0 or self.prior_precision <= 0:
            raise LRVDError("n_samples must be >= 0 and prior_precision > 0")
        if self.fit_examples < 0:
            raise LRVDError(f"fit_examples must be >= 0 (0 = the whole training set), got {self.fit_examples}")


class DictLogits(nn.Module):
    """laplace-torch's view of the classifier: ``forward(batch_dict) -> logits`` on the model's device."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(move_batch(batch, model_device(self.model)))


def subset_loader(loader, n_examples: int, seed: int = 0):
    """The first ``n_examples`` of a seeded permutation of ``loader.dataset``, same batching and collate."""
    from torch.utils.data import DataLoader, Subset

    n_total = len(loader.dataset)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n_examples]
    return DataLoader(Subset(loader.dataset, order.tolist()), batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn, shuffle=False)


def fit_on_subset(la, loader, n_examples: int, seed: int = 0) -> None:
    """Fit KFAC on ``n_examples`` of the training set and rescale it to the full set of N examples.

    laplace-torch's KFAC is ``B ⊗ A`` with ``A`` the data-*averaged* input covariance and ``B`` the
    data-*summed* gradient covariance (``_rescale_kron_factors``). On a random subset ``A`` is already
    an unbiased estimate, and ``B`` (and the summed loss used by the marginal likelihood) become
    unbiased after multiplying by N / n, so the subset posterior matches the full one in expectation
    at n / N of the cost.
    """
    n_total = len(loader.dataset)
    if n_examples <= 0 or n_examples >= n_total:
        la.fit(loader)
        return
    la.fit(subset_loader(loader, n_examples, seed))
    scale = n_total / n_examples
    for factors in la.H_facs.kfacs:
        factors[0].mul_(scale)  # B (the gradient factor) of [B, A]; a lone bias factor [B] alike
    la.H = la.H_facs.decompose(damping=la.damping)
    la.loss = la.loss * scale
    la.n_data = n_total


@contextlib.contextmanager
def head_frozen(model) -> Any:
    head = [p for p in model.head_parameters() if p.requires_grad]
    for p in head:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in head:
            p.requires_grad_(True)


class LaplaceLoRA(LoRA):
    """LoRA + post-hoc Kronecker-factored Laplace over the adapter weights."""

    name = "laplace-lora"
    description = "Laplace-LoRA (post-hoc KFAC Laplace over LoRA weights, laplace-torch)"
    Params = LaplaceLoRAParams
    posthoc_fit = posterior_params = sampled_predictive = True

    def __init__(self, **hyper_params: Any) -> None:
        super().__init__(**hyper_params)
        self.laplace = None
        self.val_loader = None

    @property
    def default_n_samples(self) -> int:  # type: ignore[override]
        return self.params.n_samples

    def set_validation_loader(self, loader) -> None:
        """Validation batches for ``prior_tuning="gridsearch"``."""
        self.val_loader = loader

    def predictive(self, device: torch.device) -> str:
        if self.params.predictive == "auto":
            return "glm" if device.type == "cuda" else "nn"
        return self.params.predictive

    def build_laplace(self, model):
        from laplace import Laplace

        with head_frozen(model):
            return Laplace(
                DictLogits(model), "classification", subset_of_weights="all", hessian_structure="kron",
                prior_precision=self.params.prior_precision, dict_key_x="input_ids", dict_key_y="labels",
            )

    @property
    def needs_validation(self) -> bool:  # type: ignore[override]
        """Grid-search prior tuning scores on the validation split; marglik needs none."""
        return self.params.prior_tuning == "gridsearch"

    def after_training(self, model, train_loader, val_loader=None) -> None:
        """Fit KFAC at the trained weights, then tune the prior precision."""
        if val_loader is not None:
            self.val_loader = val_loader
        if self.params.prior_tuning == "gridsearch" and self.val_loader is None:
            raise LRVDError("prior_tuning='gridsearch' needs set_validation_loader(loader) before after_training")
        la = self.build_laplace(model)
        pred = self.predictive(model_device(model))
        with head_frozen(model):
            fit_on_subset(la, train_loader, self.params.fit_examples,
                          seed=self.plan.train.seed if self.plan is not None else 0)
            kwargs = {"pred_type": pred, "method": self.params.prior_tuning}
            if pred == "nn":
                kwargs.update(link_approx="mc", n_samples=max(1, self.params.n_samples))
            if self.params.prior_tuning == "gridsearch":
                kwargs["val_loader"] = self.val_loader
            la.optimize_prior_precision(**kwargs)
        self.laplace = la

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        n = self.resolve_n_samples(n_samples)
        if self.laplace is None or n == 0:
            return super().predict_proba(model, batch, 0)
        la, device = self.laplace, model_device(model)
        with head_frozen(model):
            if self.predictive(device) == "glm":
                with torch.enable_grad():
                    return la(batch, pred_type="glm", link_approx="probit").float()
            with seeded(self.next_sample_seed(), device):
                return la(batch, pred_type="nn", link_approx="mc", n_samples=n).float()

    def parameter_counts(self, model) -> dict[str, int]:
        """``variational``: entries of the Kronecker factors (d_out² + d_in² per LoRA matrix)."""
        counts = super().parameter_counts(model)
        head = {id(p) for p in model.head_parameters()}
        counts["variational"] = sum(
            sum(d * d for d in p.shape) for p in model.parameters() if p.requires_grad and id(p) not in head
        )
        return counts

    # -- persistence -----------------------------------------------------------------------------
    def extra_state(self, model):
        if self.laplace is None:
            return {}, {}
        state = self.laplace.state_dict()
        tensors = {"laplace.mean": state["mean"], "laplace.prior_precision": state["prior_precision"]}
        for i, factors in enumerate(state["H"]):
            for j, f in enumerate(factors):
                tensors[f"{KFAC_PREFIX}{i}.{j}"] = f
        config = {"laplace": {"loss": float(state["loss"]), "n_data": int(state["n_data"]),
                              "n_outputs": int(state["n_outputs"]), "sigma_noise": float(state["sigma_noise"]),
                              "temperature": float(state["temperature"])}}
        return tensors, config

    def load_extra_state(self, model, tensors, config) -> None:
        if "laplace" not in config:
            return
        kfacs: dict[int, dict[int, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(KFAC_PREFIX):
                i, j = map(int, key[len(KFAC_PREFIX) :].split("."))
                kfacs.setdefault(i, {})[j] = value
        la = self.build_laplace(model)
        meta = config["laplace"]
        state = {
            "mean": tensors["laplace.mean"], "H": [[kfacs[i][j] for j in sorted(kfacs[i])] for i in sorted(kfacs)],
            "loss": torch.tensor(meta["loss"]), "prior_mean": la.prior_mean,
            "prior_precision": tensors["laplace.prior_precision"], "sigma_noise": torch.tensor(meta["sigma_noise"]),
            "n_data": meta["n_data"], "n_outputs": meta["n_outputs"], "likelihood": la.likelihood,
            "temperature": meta["temperature"], "enable_backprop": la.enable_backprop, "cls_name": type(la).__name__,
        }
        with head_frozen(model):
            la.load_state_dict(state)
        self.laplace = la
