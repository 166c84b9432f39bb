"""BayesLoRA on any Hugging Face model, the way ``peft.get_peft_model`` works.

::

    import lrvd
    model = AutoModelForSequenceClassification.from_pretrained(...)
    model = lrvd.get_bayeslora_model(model, lrvd.BayesLoraConfig(target_modules=["query", "value"],
                                                                 modules_to_save=["classifier"]))
    trainer = lrvd.BayesLoraTrainer(model=model, args=TrainingArguments(...), train_dataset=...)
    trainer.train()                                            # the bench's bayeslora objective
    probs = lrvd.predict_proba(model, batch)                   # posterior predictive [batch, classes]
    model.save_pretrained("adapter")                           # a peft adapter folder + the posterior
    model = lrvd.BayesLoraModel.from_pretrained(base_model, "adapter")   # exact reload
    plain = model.merge_and_unload()                           # posterior mean merged, no lrvd needed

The model *is* the suite's ``bayeslora`` method applied to the HF model:
:func:`get_bayeslora_model` builds a :class:`lrvd.methods.bayeslora.BayesLoRA` from the config,
attaches it through a :class:`~lrvd.classifier.ClassifierModel` view of the model (the modules in
``modules_to_save`` are its task head), and keeps the method on the model. The objective
(:meth:`BayesLoRA.training_loss`: CE + β(step) · kl_scale · KL), the optimizer groups (log σ² at
``log_sigma2_lr_mult`` × lr), the KL warm-up, the sampling schedule, the pruning schedule and the
saved-adapter format are therefore the method's own code, not a copy of it.

The model is modified in place and returned; its class becomes a subclass of its own class and of
:class:`BayesLoraModel` (forward and output type unchanged), which adds peft's model methods:
``save_pretrained`` (an adapter folder), ``merge_and_unload``, ``unload``, ``disable_adapter`` and
``print_trainable_parameters``. Only the adapters and the ``modules_to_save`` require grad.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrvd import pruning
from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.inject import lrvd_modules, matches_target, mc_predict_proba, set_sampling
from lrvd.layers import is_conv1d, total_kl
from lrvd.methods.bayeslora import BayesLoRA, BayesLoRAParams
from lrvd.protocol import AdapterConfig, TrainConfig, TrainPlan

CONFIG_ATTR = "bayeslora_config"
METHOD_ATTR = "bayeslora_method"
BASE_CLASS_ATTR = "bayeslora_base_class"
#: sidecar key of the HF config (lrvd.adapter_io's lrvd_adapter.json)
SIDECAR_CONFIG_KEY = "bayeslora_config"
NATIVE_PREFIX = "backbone."  # native state-dict keys are the ClassifierModel view's


@dataclass
class BayesLoraConfig(BayesLoRAParams):
    """Where the adapters go (``target_modules``, ``r``, ``lora_alpha``, ``modules_to_save``, peft's
    names and semantics) and every hyper-parameter of the ``bayeslora`` method, with its defaults
    (:class:`~lrvd.methods.bayeslora.BayesLoRAParams`: this class inherits them, so the HF path cannot
    drift from the bench). Fractions (``kl_warmup``, ``kl_ramp``, ``prune_start``, ``sample_warmup``)
    are of the run's optimizer steps, which :class:`lrvd.BayesLoraTrainer` knows; custom loops pass
    them to :func:`start_training`.
    """

    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    r: int = 8
    lora_alpha: float = 16.0
    #: modules trained in full besides the adapters, e.g. a new task head (peft's ``modules_to_save``)
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [m.strip() for m in self.modules_to_save.split(",") if m.strip()]
        self.adapter_config()  # target_modules and r checked where the bench checks them
        super().__post_init__()

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(target_modules=list(self.target_modules), r=self.r, alpha=self.lora_alpha)

    def method_params(self) -> dict[str, Any]:
        """The ``bayeslora`` method's hyper-parameters (protocol values already resolved)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BayesLoRAParams)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HFClassifier(ClassifierModel):
    """A :class:`ClassifierModel` view of an HF model: batch dict in, logits out; its head is the
    ``modules_to_save``. The ``bayeslora`` method's hooks take it; it owns no parameters of its own."""

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return output_logits(self.backbone(**{k: v for k, v in batch.items() if k != "labels"}))


def saved_module_parameters(model: nn.Module, modules_to_save: list[str] | None) -> list[nn.Parameter]:
    """Parameters of the modules named in ``modules_to_save`` (peft's suffix rule); one-line error
    when a name matches nothing."""
    if not modules_to_save:
        return []
    matched = [m for name, m in model.named_modules() if matches_target(name, modules_to_save)]
    if not matched:
        raise LRVDError(f"no module matches modules_to_save={modules_to_save}")
    seen: dict[int, nn.Parameter] = {}
    for module in matched:
        seen.update({id(p): p for p in module.parameters()})
    return list(seen.values())


def classifier_view(model: nn.Module) -> HFClassifier:
    """The :class:`HFClassifier` view the method's hooks run on (built per call: pruning replaces
    adapter parameters, the head's stay)."""
    config = bayeslora_config(model)
    n_classes = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    return HFClassifier(model, n_classes, saved_module_parameters(model, config.modules_to_save))


def get_bayeslora_model(model: nn.Module, config: BayesLoraConfig | None = None) -> nn.Module:
    """Put LRVD adapters on ``config.target_modules`` of ``model`` and freeze everything else.

    Raises :class:`LRVDError` with the model's linear module names when no target matches.
    """
    config = config or BayesLoraConfig()
    if lrvd_modules(model):
        raise LRVDError("the model already has BayesLoRA adapters (get_bayeslora_model was applied twice)")
    head = saved_module_parameters(model, config.modules_to_save)
    method = BayesLoRA(**config.method_params())
    n_classes = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    method.attach(HFClassifier(model, n_classes, head), config.adapter_config(), TrainPlan(total_steps=0, n_train=0))
    setattr(model, CONFIG_ATTR, config)
    setattr(model, METHOD_ATTR, method)
    setattr(model, BASE_CLASS_ATTR, type(model))
    model.__class__ = bayeslora_class(type(model))
    return model


def bayeslora_config(model: nn.Module) -> BayesLoraConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise LRVDError("the model has no BayesLoRA adapters; call lrvd.get_bayeslora_model(model, config) first")
    return config


def bayeslora_method(model: nn.Module) -> BayesLoRA:
    """The ``bayeslora`` method object that trains ``model`` (its schedule state lives here)."""
    bayeslora_config(model)
    return getattr(model, METHOD_ATTR)


# -- training ---------------------------------------------------------------------------------------
def start_training(
    model: nn.Module,
    total_steps: int,
    lr: float,
    *,
    n_train: int = 0,
    weight_decay: float = 0.0,
    head_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Tell the method the run's length and learning rate; returns the optimizer's parameter groups
    (the method's: means at ``lr``, log σ² at ``lr · log_sigma2_lr_mult``, both without decay; the
    ``modules_to_save`` at ``head_lr`` (default ``lr``) with ``weight_decay`` on their matrices).
    :class:`BayesLoraTrainer` calls it; a custom loop calls it once before building its optimizer."""
    method = bayeslora_method(model)
    view = classifier_view(model)
    train = TrainConfig(lr=lr, weight_decay=weight_decay, head_lr=head_lr)
    method.plan = TrainPlan(total_steps=int(total_steps), n_train=int(n_train), train=train)
    method.on_step_end(view, None, 0)  # the sampling state of step 0 under the run's schedule
    return method.param_groups(view, method.plan)


def is_class_target(logits: torch.Tensor, labels: Any) -> bool:
    """Single-label classification (what the bench's objective is defined for): logits ``[B, C]``,
    integer labels ``[B]``."""
    return (
        torch.is_tensor(labels)
        and logits.ndim == 2
        and labels.ndim == 1
        and not labels.is_floating_point()
        and logits.shape[0] == labels.shape[0]
    )


def bayeslora_loss(model: nn.Module, inputs: dict[str, Any], outputs: Any, step: int) -> tuple[torch.Tensor, dict]:
    """The training loss at the 0-based optimizer ``step``: for single-label classification the
    ``bayeslora`` method's own :meth:`~lrvd.methods.bayeslora.BayesLoRA.training_loss` on the model's
    logits; for any other loss (regression, token-level LM) the model's ``loss`` plus
    :func:`kl_loss` (the KL at the schedule's β)."""
    method = bayeslora_method(model)
    logits = output_logits(outputs)
    labels = inputs.get("labels")
    if is_class_target(logits, labels):
        return method.training_loss(classifier_view(model), inputs, logits, step)
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise LRVDError("the model returned no loss and its outputs are not single-label class logits")
    kl = total_kl(model)  # once: the loss term and the logged value
    weighted = kl_weight(model, step=step) * kl
    return loss + weighted.to(loss.device), {"nll": float(loss.detach()), "kl": float(kl.detach())}


def kl_weight(model: nn.Module, scale: float | None = None, *, step: int | None = None) -> float:
    """``β(step) · kl_scale`` (β = 1 when ``step`` is None): the KL's weight in :func:`kl_loss`."""
    scale = bayeslora_config(model).kl_scale if scale is None else scale
    return (1.0 if step is None else bayeslora_method(model).kl_beta(step)) * scale


def kl_loss(model: nn.Module, scale: float | None = None, *, step: int | None = None) -> torch.Tensor:
    """``β(step) · kl_scale · Σ_modules KL(q ‖ log-uniform)`` (β = 1 when ``step`` is None); for losses
    the method's objective does not cover (see :func:`bayeslora_loss`)."""
    return kl_weight(model, scale, step=step) * total_kl(model)


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as peft's ``get_nb_trainable_parameters``."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def bayeslora_step(model: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """The step hook: call after ``optimizer.step()`` with the 1-based optimizer step. The method's
    ``on_step_end``: the sampling schedule, and every ``prune_every`` steps from ``prune_start`` the
    removal of the ranks with log α ≥ τ (patching the optimizer's parameters and moments in place).
    Returns the step's logs with the effective rank."""
    method = bayeslora_method(model)
    view = classifier_view(model)
    logs = dict(method.on_step_end(view, optimizer, step) or {})
    if "effective_rank" not in logs:  # the method logs it on its rank-log steps only (it is not free)
        logs["effective_rank"] = float(pruning.effective_rank(model, method.params.tau))
    return logs


def rank_report(model: nn.Module) -> dict[str, int]:
    """Module name -> effective rank #{k : log α_k < τ}."""
    return pruning.rank_report(model, bayeslora_config(model).tau)


# -- prediction ---------------------------------------------------------------------------------------
def output_logits(output: Any) -> torch.Tensor:
    """Logits of a model output: a tensor, a transformers ``ModelOutput`` (``.logits``) or a tuple."""
    if torch.is_tensor(output):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        logits = output[0]
    if logits is None:
        raise LRVDError(f"cannot find logits in a model output of type {type(output).__name__}")
    return logits


class _Logits(nn.Module):
    """``forward(inputs_dict) -> logits`` around an HF model, for :func:`lrvd.inject.mc_predict_proba`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        return output_logits(self.model(**inputs))


@torch.no_grad()
def predict_proba(
    model: nn.Module, inputs: Any, n_samples: int | None = None, *, chunk: int = 1, seed: int | None = None
) -> torch.Tensor:
    """Posterior predictive: mean of softmax over ``n_samples`` adapter-posterior draws (0: the mean
    model), over the last axis of the model's logits. ``inputs``: the model's keyword inputs (a dict
    or tokenizer ``BatchEncoding``; ``labels`` are ignored). ``chunk`` = samples per forward pass
    (1: a loop, safe for any model; 0: all at once on a replicated batch). ``seed`` makes the draws
    reproducible without touching the caller's RNG stream.
    """
    n = bayeslora_config(model).n_samples if n_samples is None else int(n_samples)
    if n < 0:
        raise LRVDError(f"n_samples must be >= 0, got {n}")
    batch = {k: v for k, v in dict(inputs).items() if k != "labels"}
    wrapper = _Logits(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    fork = (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        if seed is not None
        else contextlib.nullcontext()
    )
    try:
        with fork:
            if seed is not None:
                torch.manual_seed(seed)
            return mc_predict_proba(wrapper, batch, n, chunk)
    finally:
        model.train(was_training)


def set_posterior_sampling(model: nn.Module, on: bool | None) -> None:
    """True: sample in every forward; False: posterior means; None (default): sample iff training."""
    set_sampling(model, on)


# -- saving, loading, merging --------------------------------------------------------------------------
def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s adapter: the ``bayeslora`` method's saved-adapter folder (a peft LoRA of the
    posterior means with ``rank_pattern`` and the ``modules_to_save``, plus ``lrvd_adapter.json`` and
    ``lrvd_posterior.safetensors`` with the per-rank log σ²), and the HF config in the sidecar."""
    from lrvd.adapter_io import SIDECAR

    path = Path(path)
    bayeslora_method(model).save_adapter(classifier_view(model), path)
    sidecar = json.loads((path / SIDECAR).read_text())
    sidecar[SIDECAR_CONFIG_KEY] = json.loads(json.dumps(bayeslora_config(model).to_dict(), default=str))
    sidecar["base_model_class"] = getattr(model, BASE_CLASS_ATTR).__name__  # the transformers class
    (path / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return path


def saved_config(meta: dict[str, Any], path: Path) -> BayesLoraConfig:
    """The :class:`BayesLoraConfig` of a saved adapter: the HF API's own, or one rebuilt from a bench
    trial's adapter (its spec, method parameters and peft ``modules_to_save``)."""
    if meta.get("method") != BayesLoRA.name:
        raise LRVDError(f"adapter at {path} was saved by method {meta.get('method')!r}, not {BayesLoRA.name!r}")
    if SIDECAR_CONFIG_KEY in meta:
        return BayesLoraConfig(**meta[SIDECAR_CONFIG_KEY])
    spec, params = meta.get("spec") or {}, meta.get("params") or {}
    peft_config = (
        json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").is_file() else {}
    )
    return BayesLoraConfig(
        target_modules=spec.get("target_modules", ["query", "value"]),
        r=spec.get("r", 8),
        lora_alpha=spec.get("alpha", 16.0),
        modules_to_save=peft_config.get("modules_to_save"),
        **{k: v for k, v in params.items() if k in {f.name for f in dataclasses.fields(BayesLoRAParams)}},
    )


def check_fits(base_model: nn.Module, native: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """One-line refusal of an adapter saved on another architecture or hidden size, before any change."""
    saved_class = meta.get("base_model_class")
    if saved_class and saved_class != type(base_model).__name__:
        raise LRVDError(f"adapter at {path} was saved on a {saved_class}, not a {type(base_model).__name__}")
    modules = dict(base_model.named_modules())
    params = dict(base_model.named_parameters())
    for key, tensor in native.items():
        name = key.removeprefix(NATIVE_PREFIX)
        module_name, _, leaf = name.rpartition(".")
        if leaf in ("A_mu", "B_mu", "rank_log_sigma2"):
            base = modules.get(module_name)
            weight = getattr(base, "weight", None)
            if weight is None:
                raise LRVDError(f"adapter at {path} adapts {module_name!r}, which this {saved_class} does not have")
            d_in, d_out = (weight.shape[0], weight.shape[1]) if is_conv1d(base) else (weight.shape[1], weight.shape[0])
            expected = {"A_mu": d_in, "B_mu": d_out}.get(leaf)
            got = tensor.shape[1] if leaf == "A_mu" else tensor.shape[0] if leaf == "B_mu" else None
            if expected is not None and got != expected:
                raise LRVDError(
                    f"adapter at {path} does not fit this model: {module_name}.{leaf} has size {got} where the "
                    f"model's layer has {expected} (another hidden size)"
                )
        elif name not in params:
            raise LRVDError(f"adapter at {path} has tensor {name!r}, which this {type(base_model).__name__} lacks")
        elif params[name].shape != tensor.shape:
            raise LRVDError(
                f"adapter at {path} does not fit this model: {name} is {tuple(tensor.shape)} in the adapter, "
                f"{tuple(params[name].shape)} in the model"
            )


def load_bayeslora(base_model: nn.Module, path: str | Path, *, is_trainable: bool = False) -> nn.Module:
    """Put the saved adapter at ``path`` on ``base_model`` (a plain transformers model), ranks as saved.

    The posterior is restored exactly (means, per-rank log σ², pruned ranks, the ``modules_to_save``).
    ``is_trainable`` False (peft's default) leaves the model in eval mode with nothing requiring grad.
    """
    from lrvd.adapter_io import read_adapter

    path = Path(path)
    if lrvd_modules(base_model):
        raise LRVDError(
            "the base model already has BayesLoRA adapters; pass the plain model to BayesLoraModel.from_pretrained"
        )
    meta, native, _ = read_adapter(path)
    config = saved_config(meta, path)
    check_fits(base_model, native, meta, path)
    ranks = (meta.get("extra") or {}).get("ranks")
    adapted = {k.removeprefix(NATIVE_PREFIX).rpartition(".")[0] for k in native if k.endswith(".A_mu")}
    if ranks is None and any(native[f"{NATIVE_PREFIX}{m}.A_mu"].shape[0] != config.r for m in adapted):
        raise LRVDError(f"adapter at {path} has pruned ranks but no rank pattern (lrvd_adapter.json extra.ranks)")
    model = get_bayeslora_model(base_model, config)
    bayeslora_method(model).load_adapter(classifier_view(model), path)
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def bayeslora_class(base: type) -> type:
    """The class a BayesLoRA model takes: ``BayesLoraModel`` first, then its own class (cached)."""
    if issubclass(base, BayesLoraModel):
        return base
    if base not in _CLASSES:
        _CLASSES[base] = type(f"BayesLora{base.__name__}", (BayesLoraModel, base), {"__module__": __name__})
    return _CLASSES[base]


class BayesLoraModel:
    """What a model returned by :func:`get_bayeslora_model` adds to its own class (peft's names).

    ``isinstance(model, lrvd.BayesLoraModel)`` tells a BayesLoRA model apart; it is still an instance
    of its transformers class, with that class's forward and outputs.
    """

    def save_pretrained(self, save_directory: str | Path, *args: Any, full_model: bool = False, **kwargs: Any):
        """Write the adapter folder (:func:`save_adapter`), as peft's ``PeftModel.save_pretrained``.

        ``full_model=True`` refuses: a transformers checkpoint has no place for the posterior, and one
        holding the LRVD layers would reload as a silently re-initialised model. Merge first for a
        plain model of the posterior mean. Other transformers arguments (the Trainer's checkpoint
        saves pass ``state_dict``, ``safe_serialization``) are accepted and do not change the folder.
        """
        if full_model:
            raise LRVDError(
                "a BayesLoRA model saves its adapter only (the posterior has no place in a transformers "
                "checkpoint); for a full plain model use model.merge_and_unload().save_pretrained(dir)"
            )
        return save_adapter(self, save_directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, base_model: Any, adapter_path: str | Path | None = None, *args: Any, **kwargs: Any):
        """``BayesLoraModel.from_pretrained(base_model, adapter_dir)``: the saved adapter on
        ``base_model``, exactly as saved (:func:`load_bayeslora`; peft's ``PeftModel.from_pretrained``)."""
        if not isinstance(base_model, nn.Module) or adapter_path is None:
            raise LRVDError(
                "BayesLoraModel.from_pretrained takes the loaded base model and the adapter folder: "
                "BayesLoraModel.from_pretrained(AutoModelFor...from_pretrained(name), adapter_dir)"
            )
        return load_bayeslora(base_model, adapter_path, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Refuse, in one line, a state dict whose adapter ranks differ from the model's (a pruned
        adapter on freshly attached layers): it would not fit, or fit the wrong ranks."""
        for name, layer in lrvd_modules(self).items():  # type: ignore[arg-type]
            for leaf, dim in (("A_mu", 0), ("B_mu", 1), ("rank_log_sigma2", 0)):
                tensor = state_dict.get(f"{name}.{leaf}")
                if tensor is not None and tensor.shape[dim] != layer.r:
                    raise LRVDError(
                        f"the state dict has rank {tensor.shape[dim]} for {name} where the model has rank "
                        f"{layer.r}: load a pruned adapter with lrvd.BayesLoraModel.from_pretrained(base_model, dir), "
                        "which applies its rank pattern"
                    )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Add the posterior-mean update s · B_mu A_mu to every adapted weight, drop the adapters and
        return the plain transformers model (in place, as peft's ``merge_and_unload``)."""
        for layer in lrvd_modules(self).values():  # type: ignore[arg-type]
            if layer.r:
                weight = layer.base_layer.weight
                delta = layer.delta_weight()
                weight.add_((delta.T if layer.fan_in_fan_out else delta).to(weight.dtype))
        return self.unload()

    def unload(self) -> nn.Module:
        """Drop the adapters without merging; return the plain transformers model (peft's ``unload``)."""
        model: nn.Module = self  # type: ignore[assignment]
        for name, layer in lrvd_modules(model).items():
            model.set_submodule(name, layer.base_layer)
        model.__class__ = getattr(model, BASE_CLASS_ATTR)
        for attr in (CONFIG_ATTR, METHOD_ATTR, BASE_CLASS_ATTR):
            model.__dict__.pop(attr, None)
        return model

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model without the adapters inside the block (peft's ``disable_adapter``). The
        ``modules_to_save`` keep their trained weights: they are trained in place, with no copy kept."""
        model: nn.Module = self  # type: ignore[assignment]
        layers = lrvd_modules(model)
        for name, layer in layers.items():
            model.set_submodule(name, layer.base_layer)
        try:
            yield
        finally:
            for name, layer in layers.items():
                model.set_submodule(name, layer)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts (peft's name)."""
        return trainable_summary(self)  # type: ignore[arg-type]

    def print_trainable_parameters(self) -> None:
        """peft's line: ``trainable params: … || all params: … || trainable%: …``."""
        trainable, total = trainable_summary(self)  # type: ignore[arg-type]
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )


_CLASSES: dict[type, type] = {}
