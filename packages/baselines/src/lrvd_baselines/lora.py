"""LoRA (Hu et al., 2022): the maximum-likelihood baseline ("MLE" in BLoB's Table 1).

``ΔW = (alpha / r) · B A`` on ``spec.target_modules`` via peft's ``LoraConfig``; A is Kaiming-uniform,
B zero (peft defaults), no dropout (BLoB's scripts use ``lora_dropout = 0``; the Laplace-LoRA
scripts use 0.1, see docs/methods.md). Training and prediction are
:class:`~lrvd.protocol.MethodBase`'s defaults: AdamW on cross-entropy, one deterministic softmax
at test time. Defaults and sources: docs/methods.md (LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrvd.errors import LRVDError
from lrvd.protocol import AdapterConfig, TrainPlan
from lrvd_baselines.peft_adapters import PeftMethod


@dataclass
class LoRAParams:
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout on the adapter input during training (BLoB: 0; Laplace-LoRA scripts: 0.1)"},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.lora_dropout < 1.0:
            raise LRVDError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


class LoRA(PeftMethod):
    """Plain LoRA trained by maximum likelihood; deterministic prediction."""

    name = "lora"
    description = "LoRA (maximum likelihood, deterministic prediction)"
    Params = LoRAParams

    def peft_config(self, spec: AdapterConfig, plan: TrainPlan):
        from peft import LoraConfig

        return LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            target_modules=list(spec.target_modules),
            lora_dropout=self.params.lora_dropout,
            bias="none",
        )
