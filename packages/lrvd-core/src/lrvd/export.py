"""Export a trained LRVD/BayesLoRA model as a plain peft LoRA adapter of its kept ranks.

The posterior means are an ordinary LoRA: ΔW = s · B_mu A_mu. After :func:`lrvd.pruning.prune_ranks`
the modules have different ranks, which peft expresses with ``rank_pattern``; the scaling s stays
the one fixed at attach time (lora_alpha / r_init), expressed per module with ``alpha_pattern``
(peft's scaling is alpha_pattern[m] / rank_pattern[m]). The newly initialised task head travels as
``modules_to_save``. The exported model's deterministic outputs equal LRVD's mean-mode outputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrvd.inject import lrvd_modules, unwrap_lrvd


def peft_lora_config(model: nn.Module) -> tuple[Any, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The peft ``LoraConfig`` and {module name: (A, B)} tensors describing ``model``'s mean adapter.

    ``model`` is a :class:`~lrvd.classifier.ClassifierModel` whose ``backbone`` holds LRVD layers.
    Modules pruned to rank 0 are left out (their update is exactly zero). Built by
    :func:`lrvd.adapter_io.lora_export`, the same code that writes saved adapters.
    """
    from lrvd.adapter_io import PEFT_PREFIX, LoraFactors, lora_export

    layers = lrvd_modules(model.backbone)
    export = lora_export(
        model, {n: LoraFactors(m.A_mu, m.B_mu, m.scaling, m.fan_in_fan_out) for n, m in layers.items()}
    )
    config, tensors = export.configs[""], export.tensors[""]
    weights = {
        n: (tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"])
        for n in config.target_modules
    }
    config.inference_mode = False
    return config, weights


@torch.no_grad()
def to_peft(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose backbone is a ``peft.PeftModel`` carrying the kept mean ranks.

    The copy keeps ``model``'s class and forward, so it is evaluated exactly like the original.
    The original model is not modified.
    """
    from peft import get_peft_model

    config, weights = peft_lora_config(model)
    exported = copy.deepcopy(model)
    unwrap_lrvd(exported.backbone)
    peft_model = get_peft_model(exported.backbone, config)
    for name, (A, B) in weights.items():
        lora = peft_model.base_model.model.get_submodule(name)
        lora.lora_A["default"].weight.copy_(A.to(lora.lora_A["default"].weight))
        lora.lora_B["default"].weight.copy_(B.to(lora.lora_B["default"].weight))
    exported.backbone = peft_model
    return exported


def save_peft_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Write ``model``'s kept mean ranks as a peft adapter directory (``PeftModel.from_pretrained``
    loads it onto a fresh backbone); returns the exported model."""
    exported = to_peft(model)
    exported.backbone.save_pretrained(str(path))
    return exported
