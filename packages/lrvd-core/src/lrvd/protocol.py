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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from lrvd.classifier import ClassifierModel, count_parameters
from lrvd.errors import LRVDError, unknown_choice


@dataclass
class AdapterSpec:
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
        default=0, metadata={"help": "checkpoint selection: steps between scorings on the validation split; the "
                                     "best checkpoint is restored after training (0: off, keep the last state)"})
    checkpoint_metric: str = field(
        default="val_accuracy", metadata={"help": "val_accuracy | val_nll: what picks the checkpoint (ties: the "
                                                  "other one, then the earlier step)"})

    def __post_init__(self) -> None:
        if self.mixed_precision not in {"auto", "bf16", "fp16", "no"}:
            raise unknown_choice("mixed_precision", self.mixed_precision, ["auto", "bf16", "fp16", "no"])
        if self.checkpoint_metric not in ("val_accuracy", "val_nll"):
            raise unknown_choice("checkpoint_metric", self.checkpoint_metric, ["val_accuracy", "val_nll"])
        if self.eval_every < 0:
            raise LRVDError(f"eval_every must be >= 0 (0: no checkpoint selection), got {self.eval_every}")
        if self.grad_accum < 1 or self.batch_size < 1:
            raise LRVDError("batch_size and grad_accum must be >= 1")


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
    def from_loader_length(cls, n_batches: int, n_train: int, train: TrainConfig) -> "TrainPlan":
        steps_per_epoch = max(1, n_batches // train.grad_accum)
        total = train.max_steps if train.max_steps else max(1, math.ceil(steps_per_epoch * train.epochs))
        return cls(total_steps=int(total), n_train=int(n_train), train=train)


@runtime_checkable
class AdapterMethod(Protocol):
    """Structural type of an adapter method (see module docstring for the call order)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type]
    params: Any

    def attach(self, model: ClassifierModel, spec: AdapterSpec, plan: TrainPlan) -> ClassifierModel: ...

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
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MethodBase:
    """Maximum-likelihood defaults for every hook; subclasses override what their algorithm changes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: True when ``after_training`` fits on ``val_loader`` and cannot run without one
    needs_validation: ClassVar[bool] = False

    def __init__(self, **hyper_params: Any) -> None:
        self.params = build_params(self.Params, self.name, hyper_params)
        self.spec: AdapterSpec | None = None
        self.plan: TrainPlan | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self, model: ClassifierModel, spec: AdapterSpec, plan: TrainPlan) -> ClassifierModel:
        raise NotImplementedError

    def adapter_parameters(self, model: ClassifierModel) -> Iterator[nn.Parameter]:
        """Trainable parameters that are not the task head."""
        for p in model.parameters():
            if p.requires_grad and not model.is_head_parameter(p):
                yield p

    def param_groups(self, model: ClassifierModel, plan: TrainPlan) -> list[dict[str, Any]]:
        """Optimizer groups: adapters at ``lr``, the task head at ``head_lr``."""
        train = plan.train
        groups = [{"params": list(self.adapter_parameters(model)), "lr": train.lr, "weight_decay": train.weight_decay}]
        head = [p for p in model.head_parameters() if p.requires_grad]
        if head:
            groups.append({"params": head, "lr": train.head_lr or train.lr, "weight_decay": train.weight_decay})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, model: ClassifierModel, plan: TrainPlan):
        optimizer = torch.optim.AdamW(self.param_groups(model, plan))
        return optimizer, linear_warmup_decay(optimizer, plan.total_steps, plan.train.warmup_ratio)

    def step_context(self, optimizer: torch.optim.Optimizer) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def training_loss(self, model, batch, logits, step):
        nll = nn.functional.cross_entropy(logits.float(), batch["labels"])
        return nll, {"nll": float(nll.detach())}

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        return {}

    def after_training(self, model, train_loader, val_loader=None) -> None:
        return None

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        return torch.softmax(model(batch).float(), dim=-1)

    def rank_report(self, model) -> dict[str, int]:
        return {}

    def parameter_counts(self, model) -> dict[str, int]:
        """``trainable`` follows the README rule; ``variational`` counts extra posterior parameters."""
        return {"trainable": count_parameters(model), "variational": 0}

    # -- persistence ---------------------------------------------------------------------------
    def adapter_state_dict(self, model: ClassifierModel) -> dict[str, torch.Tensor]:
        """Every trainable tensor plus buffers a method marks as adapter state (override to extend)."""
        names = {id(p) for p in model.parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in model.named_parameters() if id(v) in names}

    def save_adapter(self, model: ClassifierModel, path: str | Path) -> None:
        """safetensors weights + a JSON config (no pickle)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(model), str(path / "adapter.safetensors"))
        config = {"method": self.name, "params": _jsonable(dataclasses.asdict(self.params))}
        if self.spec is not None:
            config["spec"] = dataclasses.asdict(self.spec)
        (path / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def load_adapter(self, model: ClassifierModel, path: str | Path) -> None:
        from safetensors.torch import load_file

        file = Path(path) / "adapter.safetensors"
        if not file.exists():
            raise LRVDError(f"no adapter at {file}")
        state = load_file(str(file))
        missing = model.load_state_dict(state, strict=False)
        if missing.unexpected_keys:
            raise LRVDError(f"adapter at {path} does not fit this model: {missing.unexpected_keys[:3]}")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
