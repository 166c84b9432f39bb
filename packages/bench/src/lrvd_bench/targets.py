"""Which linear modules get adapters: the default by architecture, and the pre-flight check.

``adapter.target_modules: auto`` (the built-in default) takes peft's default LoRA targets for the
backbone's model type — the map ``get_peft_model`` itself falls back on when ``LoraConfig`` names
none: ``query, value`` for BERT/RoBERTa-style encoders, ``q_proj, v_proj`` for LLaMA-style decoders
(BLoB's LLaMA targets, docs/methods.md), ``query_proj, value_proj`` for DeBERTa-v2.

:func:`resolve_targets` runs in the driver's pre-flight (``lrvd_bench.sweep.checks``), before Ray
starts. It builds the backbone from its config alone, on the meta device (no weights are read or
allocated), replaces ``auto`` by the architecture's list and refuses a list that matches no linear
module, naming the ones there are. Every trial therefore records the concrete module names, and a
list written for another architecture costs one line instead of N failed trials.
"""

from __future__ import annotations

from typing import Any

from lrvd_bench.errors import BenchError

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


def skeleton_modules(model: str, task_name: str) -> tuple[str, list[str]]:
    """``(model_type, full module names of the linear layers)`` of ``model`` as ``task_name`` loads it,
    built from the config on the meta device: no weights are read, nothing is allocated."""
    import torch
    from torch import nn

    from lrvd.layers import is_conv1d
    from lrvd_bench.backbones import backbone_kind, load_model_config, model_class
    from lrvd_bench.tasks import get_task

    task = get_task(task_name)
    config, _, extra = load_model_config(model)
    cls, kwargs = model_class(backbone_kind(config, task, gguf="gguf_file" in extra), task)
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        skeleton = cls.from_config(config)
    names = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    return str(getattr(config, "model_type", "")), names


def resolve_targets(targets: list[str], model: str, tasks: list[str]) -> list[str]:
    """The concrete target list of ``model``: ``auto`` replaced by the architecture's list, checked.

    Raises a one-line :class:`BenchError` naming the model's linear modules when the list matches
    none of them (per task: the task decides the head, e.g. a multiple-choice or a sequence
    classifier) or when ``auto`` meets a model type peft has no default for.
    """
    from lrvd.inject import matches_target

    for task in tasks:
        model_type, linear = skeleton_modules(model, task)
        suffixes = ", ".join(dict.fromkeys(n.rpartition(".")[2] for n in linear)) or "none"
        if is_by_architecture(targets):
            default = architecture_targets(model_type)
            if default is None:
                raise BenchError(
                    f"adapter.target_modules auto: peft has no default for model type {model_type!r}; "
                    f"set --target-modules to some of its linear modules: {suffixes}"
                )
            targets = default
        if not any(matches_target(name, targets) for name in linear):
            raise BenchError(
                f"adapter.target_modules {','.join(targets)} matches no linear module of {model!r}; "
                f"its linear modules: {suffixes}"
            )
    return list(targets)
