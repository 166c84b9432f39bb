"""Resumable training checkpoints: what :func:`lrvd.training.fit` writes every ``train.checkpoint_every``
steps so that a preempted run continues where it stopped and ends exactly where an uninterrupted one does.

A checkpoint is a folder:

- ``adapter/``: the method's own saved adapter (``save_adapter``, the tested persistence path, which
  also carries pruned ranks and AdaLoRA's rank pattern);
- ``train_state.pt``: the loop's state, loaded with ``torch.load(weights_only=True)`` (no arbitrary
  pickle): the step, the optimizer, scheduler and fp16-scaler states, every RNG (Python, NumPy,
  torch CPU and CUDA), the model's buffers, the method's :meth:`~lrvd.protocol.MethodBase.training_state`,
  the running losses, the histories so far and the best-checkpoint selection's state.

The data position is not stored: the training loader's order comes from its own seeded generator, so
the resumed loop replays the same batch stream and skips the batches already trained on.
It is written to a sibling folder and renamed into place, so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrvd.errors import LRVDError

STATE_FILE = "train_state.pt"
ADAPTER_DIR = "adapter"


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator a training step can draw from, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def has_checkpoint(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / STATE_FILE).is_file()


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint folder was written at (-1 when it holds none)."""
    if not has_checkpoint(path):
        return -1
    return int(torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)["step"])


def save_checkpoint(path: str | Path, method: Any, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the adapter and the model's buffers) to ``path``, atomically replacing it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    method.save_adapter(model, tmp / ADAPTER_DIR)
    buffers = {k: v.detach().cpu().clone() for k, v in model.named_buffers()}
    torch.save({**state, "buffers": buffers}, tmp / STATE_FILE)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, method: Any, model: torch.nn.Module) -> dict[str, Any]:
    """Load the adapter and buffers into ``model`` (freshly attached by ``method``) and return the loop state."""
    path = Path(path)
    if not has_checkpoint(path):
        raise LRVDError(f"no training checkpoint at {path} (expected {STATE_FILE})")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    method.load_adapter(model, path / ADAPTER_DIR)
    own = dict(model.named_buffers())
    with torch.no_grad():
        for name, saved in state.pop("buffers").items():
            if name in own and own[name].shape == saved.shape:
                own[name].copy_(saved)
    return state
