"""MC-dropout LoRA (Gal & Ghahramani, 2016, applied to the adapter path as in BLoB's "MCD" baseline).

Training is LoRA with dropout on the adapter input (peft's ``lora_dropout``); at prediction the same
dropout layers stay active and the predictive is the mean softmax over ``n_samples`` passes. Only
the adapter-path dropout is switched on, so the noise is a posterior over the adapter alone; the
pretrained backbone stays deterministic. ``all_dropout=True`` instead turns on every ``nn.Dropout``
in the model (the bayesian-peft "MCD" convention), which also perturbs the frozen backbone.

Defaults: p = 0.1 (the dropout rate of the MC-dropout baselines in Laplace-LoRA and BLoB) and
M = 10 samples (BLoB's evaluation protocol). Sources and deviations: docs/methods.md (MC-dropout LoRA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lrvd.errors import LRVDError
from lrvd_baselines.lora import LoRA
from lrvd_baselines.peft_adapters import ADAPTER_NAME, adapter_layers, mean_softmax, model_device, seeded


@dataclass
class MCDropoutLoRAParams:
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout rate p on the adapter path (train and test)"})
    n_samples: int = field(default=10, metadata={"help": "MC passes averaged at prediction (0: dropout off)"})
    all_dropout: bool = field(
        default=False, metadata={"help": "at prediction, enable every dropout layer, not only the adapter's"}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.lora_dropout < 1.0:
            raise LRVDError(f"lora_dropout must be in (0, 1) for MC dropout, got {self.lora_dropout}")
        if self.n_samples < 0:
            raise LRVDError(f"n_samples must be >= 0, got {self.n_samples}")


class MCDropoutLoRA(LoRA):
    """LoRA with adapter dropout kept active at test time; predictive = mean of MC softmaxes."""

    name = "mc-dropout-lora"
    description = "MC-dropout LoRA (adapter-path dropout at test time, mean softmax of n passes)"
    Params = MCDropoutLoRAParams
    sampled_predictive = True

    @property
    def default_n_samples(self) -> int:  # type: ignore[override]
        return self.params.n_samples

    def dropout_modules(self, model) -> list[nn.Module]:
        if self.params.all_dropout:
            return [m for m in model.modules() if isinstance(m, nn.Dropout)]
        return [layer.lora_dropout[ADAPTER_NAME] for layer in adapter_layers(model).values()]

    @contextlib.contextmanager
    def active_dropout(self, model) -> Iterator[None]:
        """Eval mode everywhere except the chosen dropout layers; previous modes restored after."""
        modes = {m: m.training for m in model.modules()}
        model.eval()
        for m in self.dropout_modules(model):
            m.train()
        try:
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        n = self.resolve_n_samples(n_samples)
        if n == 0:
            return super().predict_proba(model, batch)
        with self.active_dropout(model), seeded(self.next_sample_seed(), model_device(model)):
            return mean_softmax(lambda: model(batch), n)
