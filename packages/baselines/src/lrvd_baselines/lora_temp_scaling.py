"""LoRA + temperature scaling (Guo et al., 2017): the post-hoc calibration baseline of Laplace-LoRA.

Training is plain :class:`~lrvd_baselines.lora.LoRA`. After training, one scalar temperature T > 0
is fitted by minimising the NLL of ``softmax(logits / T)`` on a held-out validation split (L-BFGS on
log T, so T stays positive), and prediction returns ``softmax(logits / T)``. Dividing by T never
changes the argmax, so accuracy is exactly LoRA's; only confidence moves.

The validation split is the sweep's shared one (``validation_fraction`` of the *training* set, 10 %
by default), carved by the bench with :func:`lrvd.data_split.holdout_indices` and passed to
``after_training(model, train_loader, val_loader)``; LoRA trains on the same remaining rows, and the
evaluation set is never used. Without a
validation loader the temperature is fitted on the training loader (with a warning): over-fitted
training logits then understate the needed temperature. Defaults: docs/methods.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from lrvd.errors import LRVDError, check_each
from lrvd.training import move_batch
from lrvd_baselines.lora import LoRA, LoRAParams
from lrvd_baselines.peft_adapters import model_device


@dataclass
class LoRATempScalingParams(LoRAParams):
    max_iter: int = field(default=100, metadata={"help": "L-BFGS iterations of the temperature fit"})
    lbfgs_lr: float = field(default=0.1, metadata={"help": "L-BFGS step size on log T"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_each(self, ">= 1", ("max_iter",), lambda v: v >= 1)
        check_each(self, "> 0", ("lbfgs_lr",), lambda v: v > 0)


@torch.no_grad()
def collect_logits(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic logits ``[N, C]`` (fp32, CPU) and labels ``[N]`` over ``loader`` in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = move_batch(batch, device)
        logits.append(model(batch).float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    if not logits:
        raise LRVDError("the temperature-scaling loader yielded no batches")
    return torch.cat(logits), torch.cat(labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100, lr: float = 0.1) -> float:
    """argmin_T mean NLL of softmax(logits / T), by L-BFGS on log T (strong-Wolfe line search)."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        raise LRVDError("temperature scaling diverged (non-finite T)")
    return temperature


class LoRATempScaling(LoRA):
    """LoRA, then one temperature fitted by NLL on a held-out split; prediction softmax(logits / T)."""

    name = "lora-temp-scaling"
    trains_like = "lora"  # its adapter is trained as LoRA's: selection reuses LoRA's chosen training settings
    description = "LoRA + temperature scaling (one T fitted by NLL on a held-out training split)"
    Params = LoRATempScalingParams
    posthoc_fit = True
    needs_validation = True

    def __init__(self, **hyper_params) -> None:
        super().__init__(**hyper_params)
        self.temperature = 1.0

    def after_training(self, model, train_loader, val_loader=None) -> None:
        if val_loader is None:
            warnings.warn(
                "lora-temp-scaling: no validation loader given; fitting the temperature on the training "
                "set (hold out a validation split in the caller)",
                stacklevel=2,
            )
            val_loader = train_loader
        logits, labels = collect_logits(model, val_loader, model_device(model))
        self.temperature = fit_temperature(logits, labels, self.params.max_iter, self.params.lbfgs_lr)

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        return torch.softmax(model(batch).float() / self.temperature, dim=-1)

    def extra_state(self, model):
        return {}, {"temperature": self.temperature}

    def load_extra_state(self, model, tensors, config) -> None:
        self.temperature = float(config.get("temperature", 1.0))
