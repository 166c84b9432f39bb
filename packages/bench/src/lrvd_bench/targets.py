"""Which linear modules get adapters by default: peft's per-architecture map.

``adapter.target_modules: auto`` (the built-in default) takes peft's default LoRA targets for the
backbone's model type — the map ``get_peft_model`` itself falls back on when ``LoraConfig`` names
none: ``query, value`` for BERT/RoBERTa-style encoders, ``q_proj, v_proj`` for LLaMA-style decoders
(BLoB's LLaMA targets, docs/methods.md), ``query_proj, value_proj`` for DeBERTa-v2.

``lrvd_bench.sweep.checks.resolve_targets`` runs in the driver's pre-flight, before Ray starts. It
builds the backbone from its config alone, on the meta device (no weights are read or allocated),
replaces ``auto`` by the architecture's list and refuses a list that matches no linear module, naming
the ones there are. Every trial therefore records the concrete module names, and a list written for
another architecture costs one line instead of N failed trials.
"""

from __future__ import annotations

from typing import Any

#: The ``adapter.target_modules`` value meaning "peft's default for the backbone's model type".
BY_ARCHITECTURE = "auto"
#: What ``bench run --help`` says about it; standard library only (``--help`` imports no peft), so a
#: test checks these examples against peft's map.
BY_ARCHITECTURE_HELP = (
    "adapter.target_modules auto (default): peft's default LoRA targets for the backbone's model type "
    "(bert, roberta: query,value; llama, mistral, qwen2: q_proj,v_proj; deberta-v2: query_proj,value_proj; "
    "gpt2: c_attn), checked against the backbone's linear modules before any trial"
)


def is_by_architecture(target_modules: Any) -> bool:
    """``auto`` as YAML/CLI give it: the string, or the one-element list the core's config makes of it."""
    if isinstance(target_modules, str):
        return target_modules.strip() == BY_ARCHITECTURE
    return list(target_modules or []) == [BY_ARCHITECTURE]


def architecture_targets(model_type: str) -> list[str] | None:
    """peft's default LoRA target modules for a transformers ``model_type`` (None: peft has none)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(targets) if targets else None
