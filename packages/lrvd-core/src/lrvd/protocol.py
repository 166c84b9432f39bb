"""The ``AdapterMethod`` protocol: the one contract every adapter method implements.

The bench and third parties only ever talk to a method through these hooks; the training loop
(:mod:`lrvd.training`) calls them in this order::

    method = get_method(name)(**hyper_params)        # unknown hyper-parameters -> LRVDError
    model  = method.attach(model, spec, plan)         # add adapters to spec.target_modules
    opt, sched = method.configure_optimizers(model, plan)
    for step ...:
        with method.step_context(opt):                # e.g. IVON's sampled_params
            logits = model(batch)
            loss, logs = method.training_loss(model, batch, logits, step)
            loss.backward()
        opt.step(); sched.step()
        method.on_step_end(model, opt, step)          # pruning, budget allocation, annealing
    method.after_training(model, train_loader, val_loader)  # e.g. Laplace fit, temperature fit
    probs = method.predict_proba(model, batch, n_samples)   # [batch, n_classes], rows sum to 1

:class:`MethodBase` implements the protocol with maximum-likelihood defaults, so a method overrides
only what its algorithm changes. To add a method: subclass it, give it a ``Params`` dataclass with
the paper's defaults (each field with ``metadata={"help": ...}``), implement ``attach``, and
register it (entry point ``lrvd.methods`` or ``@METHODS.register``).

Every method of a comparison trains on the same rows: the caller carves one validation split off the
training set with :func:`lrvd.data_split.holdout_indices` (its own seed, never touching the evaluation
set), trains every method on the rest and passes the held-out loader to ``after_training`` as
``val_loader``. A method that cannot do without it (temperature scaling) sets ``needs_validation``.

Capabilities (:data:`CAPABILITIES`) are boolean class attributes a method sets to say what it does;
the bench, the analyses and the tests read them instead of lists of method names, so a new method is
picked up by every analysis and test that applies to it by declaring them truthfully.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from lrvd.errors import LRVDError, check_each, unknown_choice

if TYPE_CHECKING:  # torch loads with the first method, not with the config dataclasses (fast ``bench --help``)
    import torch
    from torch import nn

    from lrvd.classifier import ClassifierModel


@dataclass
class AdapterConfig:
    """What all methods share in one comparison: where adapters go and their rank budget."""

    target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"],
        metadata={"help": "module-name suffixes to adapt (peft semantics), e.g. q_proj,v_proj"},
    )
    r: int = field(default=8, metadata={"help": "LoRA rank (initial rank for adaptive methods)"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator: scaling = alpha / r"})

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if self.r < 1:
            raise LRVDError(f"adapter rank r must be >= 1, got {self.r}")
        if not self.target_modules:
            raise LRVDError("adapter target_modules must name at least one module")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (the loop's knobs)."""

    lr: float = field(default=1e-3, metadata={"help": "adapter learning rate (AdamW scale)"})
    head_lr: float | None = field(default=None, metadata={"help": "task-head learning rate (default: lr)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon (torch's default; BLoB's scripts: 1e-6)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training set (ignored if max_steps)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides epochs"})
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping (None: off)"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear LR warm-up fraction"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | no (auto: bf16 on CUDA)"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and sampling"})
    log_every: int = field(default=10, metadata={"help": "steps between loss log records"})
    rank_log_interval: int = field(default=20, metadata={"help": "steps between rank snapshots"})
    eval_every: int = field(
        default=0,
        metadata={
            "help": "checkpoint selection: steps between scorings on the validation split; the "
            "best checkpoint is restored after training (0: off, keep the last state)"
        },
    )
    checkpoint_every: int = field(
        default=0,
        metadata={
            "help": "preemption: steps between resumable training checkpoints (weights, optimizer, scheduler, "
            "RNG, data position, method state); an interrupted trial continues from the last one (0: off)"
        },
    )
    checkpoint_metric: str = field(
        default="val_accuracy",
        metadata={
            "help": "val_accuracy | val_nll: what picks the checkpoint (ties: the other one, then the earlier step)"
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in {"auto", "bf16", "fp16", "no"}:
            raise unknown_choice("mixed_precision", self.mixed_precision, ["auto", "bf16", "fp16", "no"])
        if self.checkpoint_metric not in ("val_accuracy", "val_nll"):
            raise unknown_choice("checkpoint_metric", self.checkpoint_metric, ["val_accuracy", "val_nll"])
        if self.eval_every < 0:
            raise LRVDError(f"eval_every must be >= 0 (0: no checkpoint selection), got {self.eval_every}")
        if self.checkpoint_every < 0:
            raise LRVDError(f"checkpoint_every must be >= 0 (0: no resumable checkpoints), got {self.checkpoint_every}")
        if self.grad_accum < 1 or self.batch_size < 1:
            raise LRVDError("batch_size and grad_accum must be >= 1")
        # A negative lr trains by gradient ascent and a NaN one fails only inside the loop (0 freezes: tests use it).
        lrs = ("lr",) if self.head_lr is None else ("lr", "head_lr")
        check_each(self, "finite and >= 0", lrs, lambda v: math.isfinite(v) and v >= 0)
        check_each(self, "finite and > 0", ("adam_eps", "epochs"), lambda v: math.isfinite(v) and v > 0)
        check_each(self, "finite and >= 0", ("weight_decay",), lambda v: math.isfinite(v) and v >= 0)
        check_each(self, "in [0, 1]", ("warmup_ratio",), lambda v: 0.0 <= v <= 1.0)
        if self.max_steps is not None and self.max_steps < 1:
            raise LRVDError(f"max_steps must be >= 1 (None: from epochs), got {self.max_steps}")


@dataclass
class TrainPlan:
    """Facts fixed before the model is built that some methods need at attach time.

    ``total_steps`` is computed once, here, from loader length x epochs (or max_steps): AdaLoRA's
    budget schedule and BayesLoRA's KL ramp both read it. ``n_train`` is IVON's effective sample size.
    """

    total_steps: int
    n_train: int
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_loader_length(cls, n_batches: int, n_train: int, train: TrainConfig) -> TrainPlan:
        steps_per_epoch = max(1, n_batches // train.grad_accum)
        total = train.max_steps if train.max_steps else max(1, math.ceil(steps_per_epoch * train.epochs))
        return cls(total_steps=int(total), n_train=int(n_train), train=train)


#: Capability class attributes (all ``bool``, default ``False`` in :class:`MethodBase`) and what a
#: method promises by setting one to ``True``.
CAPABILITIES: dict[str, str] = {
    "adaptive_rank": "rank_report changes during training (pruning or budget allocation); "
    "bench analyze draws its rank heatmaps",
    "sampled_predictive": "predict_proba(n_samples=S) averages S posterior or dropout draws; "
    "n_samples=0 is the deterministic (mean) model",
    "posthoc_fit": "after_training fits something at the trained weights (Laplace, temperature)",
    "posterior_params": "keeps posterior-uncertainty parameters, counted as parameter_counts()['variational'] > 0",
    "svd_triplets": "adapters are AdaLoRA's P Λ Q triplets (lora_A / lora_E / lora_B); bench analyze's "
    "SNR-vs-sensitivity analysis reads them",
    "per_rank_log_alpha": "keeps log_alpha_history (per-rank log α snapshots); the bench writes log_alpha.csv",
}


@runtime_checkable
class AdapterMethod(Protocol):
    """Structural type of an adapter method (see module docstring for the call order)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type]
    params: Any
    needs_validation: ClassVar[bool]
    # capabilities (CAPABILITIES)
    adaptive_rank: ClassVar[bool]
    sampled_predictive: ClassVar[bool]
    posthoc_fit: ClassVar[bool]
    posterior_params: ClassVar[bool]
    svd_triplets: ClassVar[bool]
    per_rank_log_alpha: ClassVar[bool]
    #: the method whose trained adapter this one reuses as is (a post-hoc step on it, or an ensemble
    #: of it), else None; hyper-parameter selection gives it that method's chosen training point
    trains_like: ClassVar[str | None]

    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel: ...

    def configure_optimizers(
        self, model: ClassifierModel, plan: TrainPlan
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]: ...

    def step_context(self, optimizer: torch.optim.Optimizer) -> AbstractContextManager[Any]: ...

    def training_loss(
        self, model: ClassifierModel, batch: dict[str, torch.Tensor], logits: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def on_step_end(self, model: ClassifierModel, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]: ...

    def after_training(self, model: ClassifierModel, train_loader: Any, val_loader: Any = None) -> None: ...

    def predict_proba(
        self, model: ClassifierModel, batch: dict[str, torch.Tensor], n_samples: int | None = None
    ) -> torch.Tensor: ...

    def rank_report(self, model: ClassifierModel) -> dict[str, int]: ...

    def parameter_counts(self, model: ClassifierModel) -> dict[str, int]: ...

    def save_adapter(self, model: ClassifierModel, path: str | Path) -> None: ...

    def load_adapter(self, model: ClassifierModel, path: str | Path) -> None: ...


#: What a class must provide to be registered as a method: every hook and class attribute of the
#: protocol (``params`` is set per instance, so it is not checked on the class).
PROTOCOL_MEMBERS: tuple[str, ...] = tuple(
    sorted(
        ({n for n in vars(AdapterMethod) if not n.startswith("_")} | set(AdapterMethod.__annotations__)) - {"params"}
    )
)


def missing_protocol_members(obj: object) -> list[str]:
    """Members of :class:`AdapterMethod` that ``obj`` (a class) lacks; empty when it implements it."""
    return [n for n in PROTOCOL_MEMBERS if not hasattr(obj, n)]


def capabilities(method: object) -> dict[str, bool]:
    """The capability flags of a method class or instance (missing ones read as ``False``)."""
    return {c: bool(getattr(method, c, False)) for c in CAPABILITIES}


@dataclass
class NoParams:
    """Methods without extra hyper-parameters."""


def build_params(params_cls: type, method_name: str, overrides: dict[str, Any]) -> Any:
    """Instantiate a method's ``Params`` dataclass, rejecting unknown keys with a one-line error."""
    known = {f.name for f in dataclasses.fields(params_cls)}
    for key in overrides:
        if key not in known:
            raise unknown_choice(f"hyper-parameter for method {method_name!r}:", key, known)
    try:
        return params_cls(**overrides)
    except (TypeError, ValueError) as err:
        if isinstance(err, LRVDError):
            raise
        raise LRVDError(f"bad hyper-parameters for method {method_name!r}: {err}") from None


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up then linear decay to 0 — the schedule of the LoRA/AdaLoRA/BayesLoRA scripts."""
    import torch

    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def head_groups(model: ClassifierModel, train: TrainConfig) -> list[dict[str, Any]]:
    """The task head at ``head_lr``: weight decay on its matrices, none on biases or LayerNorm.

    Every reference implementation exempts 1-D head tensors from decay (the BayesLoRA GLUE bench's
    ``build_param_groups``, BLoB's ``no_decay = ["bias", "LayerNorm.weight"]``); see docs/methods.md.
    """
    head = [p for p in model.head_parameters() if p.requires_grad]
    lr = train.head_lr or train.lr
    groups = [
        {"params": [p for p in head if p.ndim > 1], "lr": lr, "weight_decay": train.weight_decay},
        {"params": [p for p in head if p.ndim <= 1], "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class MethodBase:
    """Maximum-likelihood defaults for every hook; subclasses override what their algorithm changes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: True when ``after_training`` fits on ``val_loader`` and cannot run without one
    needs_validation: ClassVar[bool] = False
    # capabilities (see CAPABILITIES); a subclass sets the ones its algorithm has
    adaptive_rank: ClassVar[bool] = False
    sampled_predictive: ClassVar[bool] = False
    posthoc_fit: ClassVar[bool] = False
    posterior_params: ClassVar[bool] = False
    svd_triplets: ClassVar[bool] = False
    per_rank_log_alpha: ClassVar[bool] = False
    #: see :class:`AdapterMethod`: e.g. ``"lora"`` for Laplace-LoRA, whose MAP is a LoRA adapter
    trains_like: ClassVar[str | None] = None

    def __init__(self, **hyper_params: Any) -> None:
        self.params = build_params(self.Params, self.name, hyper_params)
        self.spec: AdapterConfig | None = None
        self.plan: TrainPlan | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def check_plan(self, spec: AdapterConfig, plan: TrainPlan | None) -> None:
        """Refuse, with an ``LRVDError``, an adapter and step plan this method cannot train (``plan`` None: the
        step count is not known yet, check the adapter alone). It needs no model, so a sweep calls it before any
        trial starts; the default accepts everything, and ``attach`` checks again."""

    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel:
        raise NotImplementedError

    def adapter_parameters(self, model: ClassifierModel) -> Iterator[nn.Parameter]:
        """Trainable parameters that are not the task head."""
        for p in model.parameters():
            if p.requires_grad and not model.is_head_parameter(p):
                yield p

    def param_groups(self, model: ClassifierModel, plan: TrainPlan) -> list[dict[str, Any]]:
        """Optimizer groups: adapters at ``lr``, the task head at ``head_lr`` (:func:`head_groups`)."""
        train = plan.train
        groups = [{"params": list(self.adapter_parameters(model)), "lr": train.lr, "weight_decay": train.weight_decay}]
        groups += head_groups(model, train)
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, model: ClassifierModel, plan: TrainPlan):
        import torch

        optimizer = torch.optim.AdamW(self.param_groups(model, plan), eps=plan.train.adam_eps)
        return optimizer, linear_warmup_decay(optimizer, plan.total_steps, plan.train.warmup_ratio)

    def step_context(self, optimizer: torch.optim.Optimizer) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def training_loss(self, model, batch, logits, step):
        import torch

        nll = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        return nll, {"nll": float(nll.detach())}

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        return {}

    def after_training(self, model, train_loader, val_loader=None) -> None:
        return None

    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return torch.softmax(model(batch).float(), dim=-1)

    def rank_report(self, model) -> dict[str, int]:
        return {}

    def parameter_counts(self, model) -> dict[str, int]:
        """``trainable`` follows the README rule; ``variational`` counts extra posterior parameters."""
        from lrvd.classifier import count_parameters

        return {"trainable": count_parameters(model), "variational": 0}

    # -- persistence ---------------------------------------------------------------------------
    # A saved adapter is a peft adapter wherever peft has the format, plus a sidecar with what peft
    # lacks (see lrvd.adapter_io). A method describes its peft form in ``peft_export`` and its state
    # beyond the trainable tensors in ``extra_state``; save and load are the same for every method.
    def adapter_state_dict(self, model: ClassifierModel) -> dict[str, torch.Tensor]:
        """Every trainable tensor, by its ``model.state_dict()`` name (the method's native state)."""
        names = {id(p) for p in model.parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in model.named_parameters() if id(v) in names}

    def extra_state(self, model: ClassifierModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state beyond the trainable tensors: (tensors, JSON-able config) for the sidecar."""
        return {}, {}

    def load_extra_state(
        self, model: ClassifierModel, tensors: dict[str, torch.Tensor], config: dict[str, Any]
    ) -> None:
        return None

    # -- resumable training (lrvd.resumable) ----------------------------------------------------
    def training_state(self, model: ClassifierModel) -> dict[str, Any]:
        """What a resumed run needs besides the adapter, the optimizer, the scheduler and the RNG: by default
        every plain-data attribute (numbers, strings, lists and dicts of them: step counters, KL logs,
        rank histories). A method with state in tensors or objects (AdaLoRA's importance EMAs) adds it."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if _plain(v)}

    def load_training_state(self, model: ClassifierModel, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state` on a freshly attached method whose adapter is already loaded."""
        for key, value in state.items():
            setattr(self, key, copy.deepcopy(value))

    def peft_export(self, model: ClassifierModel) -> Any:
        """The adapter in peft's format (:class:`lrvd.adapter_io.PeftExport`); None: peft has none,
        and the whole native state goes to the sidecar."""
        return None

    def adapter_meta(self, model: ClassifierModel) -> dict[str, Any]:
        from importlib import metadata

        from lrvd.adapter_io import transformers_model

        hf_model = transformers_model(model)
        meta: dict[str, Any] = {
            "method": self.name,
            "description": self.description,
            "params": _jsonable(dataclasses.asdict(self.params)),
            "base_model_class": type(hf_model).__name__,
            "base_model": getattr(getattr(hf_model, "config", None), "_name_or_path", None),
        }
        if self.spec is not None:
            meta["spec"] = dataclasses.asdict(self.spec)
        try:
            meta["lrvd_version"] = metadata.version("lrvd-core")
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
        return meta

    def save_adapter(self, model: ClassifierModel, path: str | Path) -> None:
        """peft adapter files + the ``lrvd_adapter.json`` / ``lrvd_posterior.safetensors`` sidecar (no pickle)."""
        from lrvd.adapter_io import write_adapter

        tensors, config = self.extra_state(model)
        write_adapter(
            path,
            self.adapter_state_dict(model),
            {**self.adapter_meta(model), "extra": config},
            export=self.peft_export(model),
            extra_tensors=tensors,
        )

    def load_adapter(self, model: ClassifierModel, path: str | Path) -> None:
        """Load a saved adapter into ``model`` (freshly attached by this method with the same spec)."""
        from lrvd.adapter_io import read_adapter

        meta, native, extra = read_adapter(path)
        if meta.get("method") not in (None, self.name):
            raise LRVDError(f"adapter at {path} was saved by method {meta.get('method')!r}, not {self.name!r}")
        missing = model.load_state_dict(native, strict=False)
        if missing.unexpected_keys:
            raise LRVDError(f"adapter at {path} does not fit this model: {missing.unexpected_keys[:3]}")
        device = next(model.parameters()).device
        self.load_extra_state(model, {k: v.to(device) for k, v in extra.items()}, meta.get("extra", {}))


def _plain(obj: Any) -> bool:
    """Numbers, strings, None, and lists/tuples/dicts of them (what a training checkpoint keeps as is)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    return False


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def deprecated_alias(name: str, stacklevel: int = 2) -> Any:
    """``AdapterSpec``: deprecated alias of :class:`AdapterConfig` (its old name), kept for one release (warns)."""
    if name == "AdapterSpec":
        import warnings

        warnings.warn(
            "AdapterSpec is deprecated; use AdapterConfig (same class)", DeprecationWarning, stacklevel=stacklevel + 1
        )
        return AdapterConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    return deprecated_alias(name)
