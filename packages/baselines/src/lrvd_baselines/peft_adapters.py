"""peft glue shared by every baseline: attach a peft config, apply the trainable rule, persist extras.

One rule for all methods (README): the trainable parameters are exactly the adapter parameters peft
creates plus the newly initialised task head (``model.head_parameters()``); the pretrained backbone
stays frozen. :class:`PeftMethod` implements ``attach`` with that rule, a fixed-rank
``rank_report``, seeded Monte-Carlo prediction and persistence as a real peft adapter (with
:meth:`~lrvd.protocol.MethodBase.extra_state` for method state beyond the trainable tensors:
AdaLoRA's rank pattern, IVON's posterior scales, Laplace's Kronecker factors, in the sidecar).

A baseline subclasses :class:`PeftMethod` and implements :meth:`PeftMethod.peft_config`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lrvd.classifier import ClassifierModel, freeze_all_but
from lrvd.errors import LRVDError
from lrvd.protocol import AdapterConfig, MethodBase, TrainPlan
from lrvd.sample_record import record_samples

ADAPTER_NAME = "default"


def attach_peft(model: ClassifierModel, config: Any) -> ClassifierModel:
    """Wrap ``model.backbone`` with ``get_peft_model`` and apply the trainable rule.

    peft leaves only its adapter tensors trainable (and would freeze the task head, because we pass
    no ``task_type``: a ``SEQ_CLS`` task type would instead make the *whole* pretrained classifier
    module trainable). We then re-enable exactly the head parameters, found by identity.
    """
    from peft import get_peft_model

    head = list(model.head_parameters())
    try:
        model.backbone = get_peft_model(model.backbone, config)
    except ValueError as err:  # e.g. target_modules that match nothing
        raise LRVDError(f"cannot attach {type(config).__name__}: {str(err).splitlines()[0]}") from None
    adapters = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    freeze_all_but(model, adapters | {id(p) for p in head})
    return model


def peft_root(model: ClassifierModel) -> nn.Module:
    """The tuner model (``LoraModel`` / ``AdaLoraModel``) under the ``PeftModel`` wrapper."""
    backbone = model.backbone
    if not hasattr(backbone, "base_model") or not hasattr(backbone, "peft_config"):
        raise LRVDError("the model has no peft adapters; call method.attach(model, spec, plan) first")
    return backbone.base_model


def adapter_layers(model: ClassifierModel) -> dict[str, nn.Module]:
    """Adapted modules by their name in the wrapped transformers model (e.g. ``bert...query``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = peft_root(model).model
    return {name: m for name, m in hf_model.named_modules() if isinstance(m, BaseTunerLayer)}


def adapter_module_name(param_name: str) -> str:
    """``bert.x.query.lora_E.default`` -> ``bert.x.query`` (the key ``rank_report`` uses)."""
    parts = param_name.split(".")
    if parts[-1] == ADAPTER_NAME:
        parts = parts[:-1]
    return ".".join(parts[:-1])


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG (CPU and ``device``) and seed it, so MC predictions are reproducible."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sample_seed() -> int:
    """Seed for one Monte-Carlo prediction call, drawn from torch's global RNG.

    The caller seeds that RNG once per prediction pass (:func:`lrvd.training.predict` with
    ``seed=``; the bench passes the trial seed), so a reloaded adapter predicts exactly as the
    trained one, whatever ran before (checkpoint scoring, other batches), while successive batches
    still get independent noise. The sampling itself runs in :func:`seeded`, outside the global stream.
    """
    return int(torch.randint(0, 2**62, ()).item())


def mean_softmax(sample_logits: Callable[[], torch.Tensor], n_samples: int) -> torch.Tensor:
    """Probability averaging (BLoB protocol): ``(1/M) Σ_m softmax(f(x; θ_m))``, ``[batch, classes]``."""
    total = None
    for _ in range(n_samples):
        p = torch.softmax(sample_logits().float(), dim=-1)
        record_samples(p)
        total = p if total is None else total + p
    return total / n_samples


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class PeftMethod(MethodBase):
    """Base of the peft baselines: attach by the trainable rule, fixed-rank report, persistence."""

    #: how many samples ``predict_proba(n_samples=None)`` draws (0: deterministic)
    default_n_samples: int = 0

    def peft_config(self, spec: AdapterConfig, plan: TrainPlan) -> Any:
        raise NotImplementedError

    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel:
        self.spec, self.plan = spec, plan
        return attach_peft(model, self.peft_config(spec, plan))

    def rank_report(self, model: ClassifierModel) -> dict[str, int]:
        return {name: int(layer.r[ADAPTER_NAME]) for name, layer in adapter_layers(model).items()}

    # -- Monte-Carlo prediction ----------------------------------------------------------------
    def resolve_n_samples(self, n_samples: int | None) -> int:
        n = self.default_n_samples if n_samples is None else int(n_samples)
        if n < 0:
            raise LRVDError(f"n_samples must be >= 0, got {n}")
        return n

    def next_sample_seed(self) -> int:
        """Seed for the next MC prediction call (see :func:`sample_seed`)."""
        return sample_seed()

    # -- persistence ---------------------------------------------------------------------------
    def peft_export(self, model: ClassifierModel):
        """The live peft adapter in peft's own format, the trained task head as ``modules_to_save``."""
        from lrvd.adapter_io import peft_model_export

        return peft_model_export(model, model.backbone)
