"""Model surgery and sampling control for LRVD layers.

- :func:`replace_modules` swaps target modules (peft suffix semantics) for wrapper layers;
  :func:`inject_lrvd` uses it to install :class:`LRVDLinear`.
- :func:`sampling` switches posterior sampling on/off for every layer (adapter path only: the frozen
  backbone and its dropouts are untouched, so MC sampling is over the adapter posterior alone).
- :func:`mc_predict_proba` is the BayesLoRA posterior predictive p(y|x) ≈ (1/S) Σ_s softmax(f(x; θ_s)),
  probability averaging as in BLoB/BayesLoRA (docs/methods.md), with S samples evaluated in as few
  forward passes as ``chunk`` allows (the batch is replicated sample-major and every LRVD layer draws
  one weight sample per replica group).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError
from lrvd.layers import LRVDLinear, is_conv1d
from lrvd.sample_record import record_samples


def matches_target(name: str, targets: list[str]) -> bool:
    """peft's rule: a module matches when its full name equals a target or ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lrvd_modules(model: nn.Module) -> dict[str, LRVDLinear]:
    """Name → LRVD layer, names relative to ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LRVDLinear)}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the ``nn.Linear``/``Conv1D`` modules (valid ``target_modules``),
    in model order: ``query, key, value, dense, classifier`` for BERT."""
    names: dict[str, None] = {}
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and ".base_layer" not in name:
            names[name.rpartition(".")[2]] = None
    return list(names)


def replace_modules(
    model: nn.Module, target_modules: list[str], factory: Callable[[nn.Module], nn.Module]
) -> dict[str, nn.Module]:
    """Replace every ``nn.Linear``/``Conv1D`` whose name matches ``target_modules`` by ``factory(module)``.

    The generic surgery behind every wrapper layer (LRVD, BLoB): returns name → new module. Raises
    :class:`LRVDError` (listing a few candidate names) when nothing matches, the usual symptom of a
    target list written for another architecture.
    """
    names = [
        name
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_conv1d(m))
        and matches_target(name, target_modules)
        and ".base_layer" not in name
    ]
    if not names:
        raise LRVDError(
            f"no linear module matches target_modules={target_modules}; the model's linear module "
            f"names: {', '.join(linear_module_names(model)) or 'none'}"
        )
    replaced = {}
    for name in names:
        replaced[name] = factory(model.get_submodule(name))
        _set_submodule(model, name, replaced[name])
    return replaced


def inject_lrvd(
    model: nn.Module, target_modules: list[str], r: int, scaling: float, **layer_kwargs: Any
) -> dict[str, LRVDLinear]:
    """Wrap every ``nn.Linear``/``Conv1D`` whose name matches ``target_modules`` in an LRVD layer."""
    replace_modules(model, target_modules, lambda base: LRVDLinear(base, r, scaling, **layer_kwargs))
    return lrvd_modules(model)


def unwrap_lrvd(model: nn.Module) -> None:
    """Put the frozen base layers back (in place), dropping the adapters."""
    for name, layer in lrvd_modules(model).items():
        _set_submodule(model, name, layer.base_layer)


def set_sampling(model: nn.Module, on: bool | None, n_weight_samples: int = 1) -> None:
    """``on``: True = sample, False = posterior means, None = sample iff training."""
    for layer in lrvd_modules(model).values():
        layer.sampling = on
        layer.n_weight_samples = n_weight_samples


@contextlib.contextmanager
def sampling(model: nn.Module, on: bool | None = True, n_weight_samples: int = 1) -> Iterator[None]:
    """Temporarily set the sampling mode of every LRVD layer; restores the previous state."""
    layers = list(lrvd_modules(model).values())
    saved = [(layer.sampling, layer.n_weight_samples) for layer in layers]
    set_sampling(model, on, n_weight_samples)
    try:
        yield
    finally:
        for layer, (s, n) in zip(layers, saved):
            layer.sampling, layer.n_weight_samples = s, n


def batch_size_of(batch: dict[str, Any]) -> int:
    if torch.is_tensor(batch.get("labels")):
        return int(batch["labels"].shape[0])
    for v in batch.values():
        if torch.is_tensor(v) and v.ndim:
            return int(v.shape[0])
    raise LRVDError("cannot infer the batch size: the batch holds no tensors")


def replicate_batch(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """Concatenate ``n`` copies along dim 0 (sample-major) of every tensor whose dim 0 is the batch."""
    size = batch_size_of(batch)
    return {
        k: (torch.cat([v] * n) if torch.is_tensor(v) and v.ndim and v.shape[0] == size else v) for k, v in batch.items()
    }


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (what every forward pass keeps in memory)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class ActivationProbe:
    """Peak bytes of the module outputs alive at once during a forward pass (forward hooks).

    Torch has no allocator statistics on CPU, and resetting CUDA's peak statistics would break the
    caller's own peak-memory window, so the probe counts what it can see on any device: every module's
    output tensors, held through weak references (a tensor freed by the model drops out), deduplicated
    by storage. Work *inside* a module (attention scores) is not seen; :func:`auto_chunk` allows for it
    with a factor of 2.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model, self.peak, self._live, self._handles = model, 0, {}, []

    def __enter__(self) -> ActivationProbe:
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._live.clear()

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_tensor(output):
            outputs = [output]
        else:
            outputs = list(output.values()) if isinstance(output, dict) else list(output or ())
        for t in outputs:
            if torch.is_tensor(t):
                storage = t.untyped_storage()
                self._live[storage.data_ptr()] = (weakref.ref(t), storage.nbytes())
        self._live = {k: v for k, v in self._live.items() if v[0]() is not None}
        self.peak = max(self.peak, sum(n for _, n in self._live.values()))


#: ``mc_chunk = 0`` on these device types: samples per forward pass fixed by a measurement instead of
#: the memory probe. On CPU one pass over S × the rows costs more than S passes (``bench cost
#: --layers``, row "S-sample predictive, all S batched": 1.2–1.4 × the loop at one thread), so the
#: default there is the loop; elsewhere (CUDA) the samples are batched as far as the memory budget allows.
DEVICE_MC_CHUNK: dict[str, int] = {"cpu": 1}


def default_chunk(model: nn.Module) -> int:
    """``mc_chunk = 0`` resolved by the model's device: the measured choice, or 0 (the memory probe)."""
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    return DEVICE_MC_CHUNK.get(device_type, 0)


def auto_chunk(n_samples: int, resident: int, activation: int, memory_budget: float) -> int:
    """Samples per forward pass so that the predictive's peak stays within ``1 + memory_budget`` times
    one deterministic pass: a pass of c samples needs about resident + c · 2 · activation bytes, one
    deterministic pass resident + activation, so c = ⌊1 + budget · (resident + a) / a⌋ with a = 2 ·
    activation (clipped to [1, n_samples]; all samples at once when nothing was measured)."""
    if activation <= 0:
        return n_samples
    a = 2 * activation
    return max(1, min(n_samples, int(1 + memory_budget * (resident + activation) / a)))


@torch.no_grad()
def mc_predict_proba(
    model: Callable[[dict[str, Any]], torch.Tensor],
    batch: dict[str, Any],
    n_samples: int,
    chunk: int = 0,
    memory_budget: float = 0.1,
) -> torch.Tensor:
    """Posterior predictive ``[batch, n_classes]``: mean of softmax over ``n_samples`` adapter draws.

    ``chunk`` = weight samples per forward pass: 0 (default) chooses it by device — on CPU a loop
    (:data:`DEVICE_MC_CHUNK`, measured), elsewhere from ``memory_budget``: the first sample runs alone
    under an :class:`ActivationProbe`, then the rest go in chunks of :func:`auto_chunk` samples, so the
    peak stays near ``1 + memory_budget`` times one deterministic pass while large models (weights ≫
    activations) still batch every sample; 1 is a plain loop (safe for models whose layers do not keep
    the batch dimension first); ``n_samples`` is one pass for all. ``n_samples == 0`` is the mean model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("mc_predict_proba needs an nn.Module")
    if n_samples <= 0:
        with sampling(model, False):
            return torch.softmax(model(batch).float(), dim=-1)
    size = batch_size_of(batch)
    total: torch.Tensor | None = None
    done = 0
    if chunk <= 0:
        chunk = default_chunk(model)
    if chunk <= 0:
        with sampling(model, True, n_weight_samples=1), ActivationProbe(model) as probe:
            total = torch.softmax(model(batch).float(), dim=-1)
        record_samples(total)
        done = 1
        chunk = auto_chunk(n_samples, resident_bytes(model), probe.peak, memory_budget)
    chunk = min(chunk, n_samples)
    while done < n_samples:
        s = min(chunk, n_samples - done)
        with sampling(model, True, n_weight_samples=s):
            logits = model(replicate_batch(batch, s) if s > 1 else batch).float()
        draws = torch.softmax(logits, dim=-1).reshape(s, size, -1)
        record_samples(draws)
        probs = draws.sum(0)
        total = probs if total is None else total + probs
        done += s
    assert total is not None
    return total / n_samples
