"""Saved adapters are peft adapters: one writer and one reader for every method.

A saved adapter folder holds, wherever peft has the format, a real peft adapter that plain
``transformers`` + ``peft`` load with ``PeftModel.from_pretrained(base_model, folder)``, plus a
sidecar with what peft lacks::

    adapter_config.json          peft's config (LoraConfig / AdaLoraConfig; the task head as modules_to_save)
    adapter_model.safetensors    peft's weights (adapter means + the trained task head)
    <name>/adapter_config.json   named peft adapters (the ensemble's members), one folder each
    lrvd_adapter.json            sidecar: method, hyper-parameters, AdapterConfig, method state (temperature,
                                 kept ranks, …), the evaluation settings, and where each tensor lives
    lrvd_posterior.safetensors   sidecar tensors peft has no place for: the posterior (BayesLoRA's per-rank
                                 log σ², BLoB's G, IVON's σ, Laplace's Kronecker factors)

The suite reloads an adapter into the full method from its *native* state dict (the method's own
parameter names, :meth:`lrvd.protocol.MethodBase.adapter_state_dict`). Saving never stores a tensor
twice when it can help it: a native tensor that the peft file already holds bit for bit is recorded
in the sidecar as a reference ``"<folder>/<peft key>"``; only the rest goes to
``lrvd_posterior.safetensors``. Loading reverses the mapping, so a reload is exact.

A method describes its peft form with a :class:`PeftExport` (built by :func:`lora_export` for
methods with their own layers, or :func:`peft_model_export` for methods on peft's tuners); a
method without one saves its whole native state in the sidecar.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
SIDECAR = "lrvd_adapter.json"
POSTERIOR = "lrvd_posterior.safetensors"
FORMAT = "lrvd-adapter/1"
EXTRA_PREFIX = "extra."
PEFT_PREFIX = "base_model.model."
# Layout written before the adapters became peft adapters; still read.
LEGACY_WEIGHTS, LEGACY_EXTRA, LEGACY_EXTRA_CONFIG = (
    "adapter.safetensors",
    "method_state.safetensors",
    "method_state.json",
)


@dataclass
class PeftExport:
    """A model's adapter in peft's format: one peft config + weights per folder ("" = the root)."""

    configs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: native state-dict key -> (folder, peft key) of the tensor that may hold the same values
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)


# -- the transformers model and its task head --------------------------------------------------
def transformers_model(model: nn.Module) -> nn.Module:
    """The plain transformers model under a classifier (``model.backbone``) and any peft wrapper."""
    from peft import PeftModel

    inner = model
    while hasattr(inner, "head_parameters") and hasattr(inner, "backbone"):  # ClassifierModel(s)
        inner = inner.backbone
    while isinstance(inner, PeftModel):  # PeftModel -> tuner (LoraModel …) -> transformers model
        inner = inner.base_model.model
    return inner


def head_parameter_names(model: nn.Module, hf_model: nn.Module | None = None) -> dict[str, nn.Parameter]:
    """Task-head parameters by their name in the transformers model (``classifier.weight`` …)."""
    hf_model = hf_model if hf_model is not None else transformers_model(model)
    head = {id(p) for p in model.head_parameters()} if hasattr(model, "head_parameters") else set()
    return {n: p for n, p in hf_model.named_parameters() if id(p) in head}


def head_module_names(model: nn.Module, hf_model: nn.Module | None = None) -> list[str]:
    """The modules owning the task head: peft's ``modules_to_save``."""
    return sorted({n.rpartition(".")[0] for n in head_parameter_names(model, hf_model)} - {""})


def native_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model.state_dict()`` (how the method's native state is keyed)."""
    return {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}


def peft_key(hf_name: str, adapter_name: str | None = None) -> str:
    """The key peft saves a parameter of the wrapped model under: ``base_model.model.`` + its name without
    the adapter-name part (``lora_A.default.weight`` -> ``lora_A.weight``) and without peft's
    ``modules_to_save.<adapter>`` wrapper."""
    parts = [p for p in hf_name.split(".") if p != adapter_name and p != "modules_to_save"]
    return PEFT_PREFIX + ".".join(parts)


def head_tensors(
    model: nn.Module, hf_model: nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str]]]:
    """The trained head as peft ``modules_to_save`` tensors, and its native-key aliases (root folder)."""
    names = native_names(model)
    tensors, aliases = {}, {}
    for name, p in head_parameter_names(model, hf_model).items():
        tensors[peft_key(name)] = p.detach()
        aliases[names[id(p)]] = ("", peft_key(name))
    return tensors, aliases


# -- building a PeftExport ---------------------------------------------------------------------------
@dataclass
class LoraFactors:
    """One module's mean LoRA update ΔW = scaling · B A (A [r, d_in], B [d_out, r], nn.Linear orientation)."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    fan_in_fan_out: bool = False
    #: native keys of A and B when they are stored as such (None: derived, e.g. AdaLoRA's P·diag(λ))
    native_A: str | None = None
    native_B: str | None = None


def lora_export(
    model: nn.Module, modules: Mapping[str, LoraFactors], *, base_model_name: str | None = None
) -> PeftExport:
    """A plain peft LoRA of ``modules`` (names relative to the transformers model) plus the task head.

    Ranks may differ per module (pruning): peft's ``rank_pattern``; the scaling s stays per module
    through ``alpha_pattern`` (peft's scaling is alpha_pattern[m] / rank_pattern[m]). Rank-0 modules
    are left out (their update is exactly zero).
    """
    from peft import LoraConfig

    kept = {n: f for n, f in modules.items() if f.A.shape[0] > 0}
    if not kept:
        raise LRVDError("nothing to export as peft LoRA: every adapted module has rank 0")
    names = sorted(kept)
    max_r = max(kept[n].A.shape[0] for n in names)
    hf_model = transformers_model(model)
    config = LoraConfig(
        r=max_r,
        lora_alpha=max_r * kept[names[0]].scaling,
        target_modules=names,
        rank_pattern={n: int(kept[n].A.shape[0]) for n in names},
        alpha_pattern={n: kept[n].scaling * kept[n].A.shape[0] for n in names},
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=any(kept[n].fan_in_fan_out for n in names),
        modules_to_save=head_module_names(model, hf_model) or None,
        base_model_name_or_path=base_model_name or _name_or_path(hf_model),
        inference_mode=True,
    )
    tensors, aliases = head_tensors(model, hf_model)
    for n in names:
        f = kept[n]
        for factor, value, native in (("lora_A", f.A, f.native_A), ("lora_B", f.B, f.native_B)):
            key = f"{PEFT_PREFIX}{n}.{factor}.weight"
            tensors[key] = value.detach()
            if native:
                aliases[native] = ("", key)
    return PeftExport(configs={"": config}, tensors={"": tensors}, aliases=aliases)


def peft_model_export(
    model: nn.Module,
    peft_model: nn.Module,
    adapters: Iterable[str] = ("default",),
    *,
    folders: Mapping[str, str] | None = None,
    head: bool = True,
) -> PeftExport:
    """The adapters of a live ``peft.PeftModel`` in peft's own saved form (``get_peft_model_state_dict``,
    which also applies AdaLoRA's ``rank_pattern``), plus the task head as ``modules_to_save`` when the
    method trained it in place (``head``; False when the peft config already has its own
    ``modules_to_save``). ``folders`` maps adapter name -> sub-folder ("" = root)."""
    from peft import get_peft_model_state_dict

    hf_model = transformers_model(peft_model)
    names = native_names(model)
    head_tensor_map, head_aliases = head_tensors(model, hf_model) if head else ({}, {})
    heads = head_module_names(model, hf_model) if head else []
    export = PeftExport()
    for adapter in adapters:
        folder = (folders or {}).get(adapter, "")
        config = copy.deepcopy(peft_model.peft_config[adapter])
        config.inference_mode = True
        if heads:
            config.modules_to_save = sorted(set(config.modules_to_save or []) | set(heads))
        if not getattr(config, "base_model_name_or_path", None):
            config.base_model_name_or_path = _name_or_path(hf_model)
        state = {k: v.detach() for k, v in get_peft_model_state_dict(peft_model, adapter_name=adapter).items()}
        if heads:
            state.update(head_tensor_map)
            export.aliases.update({k: (folder, v[1]) for k, v in head_aliases.items()})
        for name, p in hf_model.named_parameters():
            if adapter in name.split(".") and id(p) in names:
                export.aliases[names[id(p)]] = (folder, peft_key(name, adapter))
        export.configs[folder] = config
        export.tensors[folder] = state
    return export


def _name_or_path(hf_model: nn.Module) -> str | None:
    config = getattr(hf_model, "config", None)
    return getattr(config, "_name_or_path", None) or None


# -- writing and reading -------------------------------------------------------------------------
def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def write_adapter(
    path: str | Path,
    native: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    export: PeftExport | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write the peft folder(s) of ``export`` and the sidecar (``meta`` + tensors peft does not hold)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    export = export or PeftExport()
    for folder, config in export.configs.items():
        target = path / folder if folder else path
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(target))
        save_file(
            {k: _cpu(v) for k, v in export.tensors[folder].items()},
            str(target / PEFT_WEIGHTS),
            metadata={"format": "pt"},
        )
    in_peft, posterior = {}, {}
    for key, value in native.items():
        alias = export.aliases.get(key)
        stored = export.tensors.get(alias[0], {}).get(alias[1]) if alias else None
        if (
            stored is not None
            and stored.shape == value.shape
            and stored.dtype == value.dtype
            and torch.equal(_cpu(stored), _cpu(value))
        ):
            in_peft[key] = f"{alias[0]}/{alias[1]}"
        else:
            posterior[key] = _cpu(value)
    posterior.update({EXTRA_PREFIX + k: _cpu(v) for k, v in (extra_tensors or {}).items()})
    if posterior:
        save_file(posterior, str(path / POSTERIOR))
    else:  # re-saving into a folder: no stale posterior from an earlier save
        (path / POSTERIOR).unlink(missing_ok=True)
    sidecar = {
        "format": FORMAT,
        **_jsonable(dict(meta)),
        "peft_folders": sorted(export.configs),
        "native_in_peft": in_peft,
    }
    (path / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return path


def has_adapter(path: str | Path) -> bool:
    """A saved adapter folder (this layout or the legacy one) is at ``path``."""
    path = Path(path)
    return (path / SIDECAR).is_file() or (path / LEGACY_WEIGHTS).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar JSON (or, for the legacy layout, its ``adapter_config.json`` + ``method_state.json``)."""
    path = Path(path)
    if (path / SIDECAR).is_file():
        return json.loads((path / SIDECAR).read_text())
    legacy = path / PEFT_CONFIG
    if legacy.is_file() and (path / LEGACY_WEIGHTS).is_file():
        meta = json.loads(legacy.read_text())
        meta.setdefault("extra", {})
        if (path / LEGACY_EXTRA_CONFIG).is_file():
            meta["extra"].update(json.loads((path / LEGACY_EXTRA_CONFIG).read_text()))
        for key in ("ranks", "scaling"):  # BayesLoRA kept these at the top level
            if key in meta:
                meta["extra"].setdefault(key, meta[key])
        return meta
    raise LRVDError(f"no saved adapter at {path} (expected {SIDECAR})")


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(sidecar meta, native state dict, extra method tensors) of a saved adapter, on the CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    if not (path / SIDECAR).is_file():  # legacy layout
        extra = load_file(str(path / LEGACY_EXTRA)) if (path / LEGACY_EXTRA).is_file() else {}
        return meta, load_file(str(path / LEGACY_WEIGHTS)), extra
    posterior = load_file(str(path / POSTERIOR)) if (path / POSTERIOR).is_file() else {}
    native = {k: v for k, v in posterior.items() if not k.startswith(EXTRA_PREFIX)}
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in posterior.items() if k.startswith(EXTRA_PREFIX)}
    files: dict[str, dict[str, torch.Tensor]] = {}
    for key, ref in meta.get("native_in_peft", {}).items():
        folder, _, peft_name = ref.partition("/")
        if folder not in files:
            target = path / folder if folder else path
            files[folder] = load_file(str(target / PEFT_WEIGHTS))
        if peft_name not in files[folder]:
            raise LRVDError(f"adapter at {path}: {PEFT_WEIGHTS} in {folder or '.'} lacks {peft_name}")
        native[key] = files[folder][peft_name]
    return meta, native, extra


def record_evaluation(path: str | Path, **settings: Any) -> None:
    """Add the settings a saved adapter was evaluated with (``n_samples``, seed …) to its sidecar."""
    file = Path(path) / SIDECAR
    meta = json.loads(file.read_text())
    meta.setdefault("evaluation", {}).update(_jsonable(settings))
    file.write_text(json.dumps(meta, indent=2))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
