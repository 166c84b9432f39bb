"""The one training and evaluation loop that drives any :class:`~lrvd.protocol.AdapterMethod`.

Methods customise behaviour only through the protocol hooks; nothing here knows any algorithm.
The loop provides what every comparison needs to be fair: the same seeding, data order, gradient
accumulation, clipping, mixed precision (bf16 autocast on CUDA), progress bar and timing.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.protocol import AdapterMethod, TrainPlan


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a trial is reproducible on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU; anything else is validated."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LRVDError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LRVDError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast_context(device: torch.device, mode: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA for ``auto``/``bf16``; fp16 when asked; off on CPU (too slow to help)."""
    if device.type != "cuda" or mode == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def _progress(iterable: Iterable[Any], total: int | None, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _cycle(loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    epoch = 0
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield epoch, batch
        if empty:
            raise LRVDError("the training loader yielded no batches (empty training set?)")
        epoch += 1


@dataclass
class TrainResult:
    """What a training run leaves behind for the leaderboard and the analyses."""

    steps: int = 0
    wall_time_s: float = 0.0
    time_per_step_s: float = 0.0
    final_loss: float = math.nan
    loss_history: list[dict[str, float]] = field(default_factory=list)
    rank_history: list[dict[str, Any]] = field(default_factory=list)
    step_logs: list[dict[str, float]] = field(default_factory=list)


def fit(
    method: AdapterMethod,
    model: ClassifierModel,
    train_loader: Iterable[dict[str, torch.Tensor]],
    plan: TrainPlan,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (already ``attach``-ed) for ``plan.total_steps`` optimizer steps.

    A NaN/inf loss raises :class:`LRVDError` naming the step and the method, instead of silently
    training on garbage.
    """
    cfg = plan.train
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    model.train()
    optimizer, scheduler = method.configure_optimizers(model, plan)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.mixed_precision == "fp16" else None
    result = TrainResult()
    batches = _cycle(train_loader)
    rank_every = max(1, cfg.rank_log_interval)
    result.rank_history.append({"step": 0, **method.rank_report(model)})
    bar = _progress(range(plan.total_steps), plan.total_steps, f"train {method.name}", progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    running = 0.0
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        loss_value = 0.0
        with method.step_context(optimizer):
            for _ in range(cfg.grad_accum):
                epoch, batch = next(batches)
                batch = move_batch(batch, device)
                with autocast_context(device, cfg.mixed_precision):
                    logits = model(batch)
                loss, logs = method.training_loss(model, batch, logits, step)
                if not torch.isfinite(loss):
                    raise LRVDError(
                        f"non-finite loss ({float(loss.detach())}) at step {step} for method {method.name!r}; "
                        "lower the learning rate or the KL scale"
                    )
                loss = loss / cfg.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                loss_value += float(loss.detach())
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.max_grad_norm:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = float(optimizer.param_groups[0]["lr"])  # the rate this step used (the scheduler moves it next)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        step_logs = method.on_step_end(model, optimizer, step + 1) or {}
        running = loss_value if step == 0 else 0.9 * running + 0.1 * loss_value
        if (step + 1) % max(1, cfg.log_every) == 0 or step + 1 == plan.total_steps:
            record = {"step": step + 1, "epoch": epoch, "loss": loss_value, "lr": lr, **logs, **step_logs}
            result.loss_history.append(record)
            if on_log:
                on_log(record)
        if step_logs:
            result.step_logs.append({"step": step + 1, **step_logs})
        if (step + 1) % rank_every == 0 or step + 1 == plan.total_steps:
            result.rank_history.append({"step": step + 1, **method.rank_report(model)})
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{running:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.steps = plan.total_steps
    result.wall_time_s = time.perf_counter() - start
    result.time_per_step_s = result.wall_time_s / max(1, plan.total_steps)
    result.final_loss = running
    return result


@torch.no_grad()
def predict(
    method: AdapterMethod,
    model: ClassifierModel,
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    n_samples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-predictive probabilities ``[N, n_classes]`` and labels ``[N]`` over ``loader``."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    model.eval()
    probs, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in _progress(loader, total, f"predict {method.name}", progress):
        batch = move_batch(batch, device)
        p = method.predict_proba(model, batch, n_samples)
        probs.append(p.float().cpu())
        labels.append(batch["labels"].cpu())
    if not probs:
        raise LRVDError("the evaluation loader yielded no batches (empty evaluation set?)")
    return torch.cat(probs), torch.cat(labels)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
