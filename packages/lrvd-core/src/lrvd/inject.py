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
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lrvd.errors import LRVDError
from lrvd.layers import LRVDLinear, is_conv1d


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
        raise LRVDError(f"no linear module matches target_modules={target_modules}; the model's linear module "
                        f"names: {', '.join(linear_module_names(model)) or 'none'}")
    replaced = {}
    for name in names:
        replaced[name] = factory(model.get_submodule(name))
        _set_submodule(model, name, replaced[name])
    return replaced


def inject_lrvd(model: nn.Module, target_modules: list[str], r: int, scaling: float, **layer_kwargs: Any) -> dict[str, LRVDLinear]:
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
        k: (torch.cat([v] * n) if torch.is_tensor(v) and v.ndim and v.shape[0] == size else v)
        for k, v in batch.items()
    }


@torch.no_grad()
def mc_predict_proba(
    model: Callable[[dict[str, Any]], torch.Tensor], batch: dict[str, Any], n_samples: int, chunk: int = 0
) -> torch.Tensor:
    """Posterior predictive ``[batch, n_classes]``: mean of softmax over ``n_samples`` adapter draws.

    ``chunk`` = weight samples per forward pass (0: all at once; 1: a plain loop, which is safe for
    models whose layers do not keep the batch dimension first). ``n_samples == 0`` is the mean model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("mc_predict_proba needs an nn.Module")
    if n_samples <= 0:
        with sampling(model, False):
            return torch.softmax(model(batch).float(), dim=-1)
    chunk = n_samples if chunk <= 0 else min(chunk, n_samples)
    size = batch_size_of(batch)
    total: torch.Tensor | None = None
    done = 0
    while done < n_samples:
        s = min(chunk, n_samples - done)
        with sampling(model, True, n_weight_samples=s):
            logits = model(replicate_batch(batch, s) if s > 1 else batch).float()
        probs = torch.softmax(logits, dim=-1).reshape(s, size, -1).sum(0)
        total = probs if total is None else total + probs
        done += s
    assert total is not None
    return total / n_samples
