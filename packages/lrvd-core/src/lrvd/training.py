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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lrvd import resumable
from lrvd.checkpoint import BestCheckpoint
from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.metrics import classification_metrics
from lrvd.protocol import AdapterMethod, TrainConfig, TrainPlan
from lrvd.sample_record import recording, stacked


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


def progress_bar(iterable: Iterable[Any], total: int | None, desc: str, enabled: bool = True):
    """A tqdm bar over ``iterable`` (the iterable itself when disabled: Ray workers, tests)."""
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
    final_nll: float = math.nan  # the NLL part of the loss (without KL terms), smoothed like final_loss
    loss_history: list[dict[str, float]] = field(default_factory=list)
    rank_history: list[dict[str, Any]] = field(default_factory=list)
    step_logs: list[dict[str, float]] = field(default_factory=list)
    #: checkpoint selection (``train.eval_every`` > 0): validation scores at every scoring, the step
    #: whose state was restored and its scores, and the time spent scoring (not in ``wall_time_s``)
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_scores: dict[str, float] = field(default_factory=dict)
    val_time_s: float = 0.0
    #: the step a checkpoint restored this run at (``train.checkpoint_every``); None when it ran in one go
    resumed_from: int | None = None


@dataclass
class StepResult:
    """What one optimizer step leaves for the loop's logs (and ``bench cost``'s hook timing)."""

    loss: float
    logs: dict[str, float]
    step_logs: dict[str, float]
    hook_s: float = math.nan


def train_step(
    method: AdapterMethod,
    model: ClassifierModel,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[dict[str, Any]],
    step: int,
    *,
    device: torch.device,
    train: TrainConfig,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    time_hook: bool = False,
) -> StepResult:
    """One optimizer step: every method's step in :func:`fit` and in ``bench cost`` is this function.

    zero_grad; inside ``method.step_context`` each micro-batch (``len(micro_batches)`` = gradient
    accumulation) runs forward under autocast, ``training_loss``, a NaN/inf check and backward of
    loss / n_micro (scaled when an fp16 ``scaler`` is given); then unscale, clip to
    ``train.max_grad_norm``, optimizer and scheduler step, and ``method.on_step_end(model, optimizer,
    step + 1)``. ``time_hook`` times ``on_step_end`` alone (synchronising CUDA around it).
    """
    optimizer.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    loss_value = 0.0
    n_micro = len(micro_batches)
    with method.step_context(optimizer):
        for batch in micro_batches:
            batch = move_batch(batch, device)
            with autocast_context(device, train.mixed_precision):
                logits = model(batch)
            loss, logs = method.training_loss(model, batch, logits, step)
            if not torch.isfinite(loss):
                raise LRVDError(
                    f"non-finite loss ({float(loss.detach())}) at step {step} for method {method.name!r}; "
                    "lower the learning rate or the KL scale"
                )
            loss = loss / n_micro
            (scaler.scale(loss) if scaler else loss).backward()
            loss_value += float(loss.detach())
    if scaler:
        scaler.unscale_(optimizer)
    if train.max_grad_norm:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if time_hook:
        _synchronize(device)
    t0 = time.perf_counter()
    step_logs = method.on_step_end(model, optimizer, step + 1) or {}
    if time_hook:
        _synchronize(device)
    return StepResult(loss_value, logs, step_logs, time.perf_counter() - t0 if time_hook else math.nan)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    method: AdapterMethod,
    model: ClassifierModel,
    train_loader: Iterable[dict[str, torch.Tensor]],
    plan: TrainPlan,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    val_loader: Iterable[dict[str, torch.Tensor]] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` (already ``attach``-ed) for ``plan.total_steps`` optimizer steps.

    A NaN/inf loss raises :class:`LRVDError` naming the step and the method, instead of silently
    training on garbage. With ``train.eval_every`` > 0 the model is scored on ``val_loader`` every
    that many steps and at the last one, the scores join that step's log record (``val_accuracy``,
    ``val_nll``, ``val_ece``, ``val_brier``) and the best checkpoint is restored at the end
    (:mod:`lrvd.checkpoint`). Scoring runs under a forked RNG, so it leaves the training path unchanged.

    With ``train.checkpoint_every`` > 0 and a ``checkpoint_dir``, the loop writes a resumable checkpoint
    there every that many steps (:mod:`lrvd.resumable`) and then calls ``on_checkpoint(step)``; when the
    folder already holds one, training continues from it, replaying the records logged before it
    through ``on_log``, and ends with the weights, histories and final losses of an uninterrupted run
    (``wall_time_s`` adds up the training time of every sitting).
    """
    cfg = plan.train
    if cfg.eval_every and val_loader is None:
        raise LRVDError(
            f"train.eval_every={cfg.eval_every} needs a validation split (val_loader); "
            "hold one out (validation_fraction > 0) or set eval_every to 0"
        )
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    saving = bool(cfg.checkpoint_every and checkpoint_dir is not None)
    resumed = (
        resumable.load_checkpoint(checkpoint_dir, method, model)
        if saving and resumable.has_checkpoint(checkpoint_dir)
        else None
    )
    model.to(device)
    model.train()
    optimizer, scheduler = method.configure_optimizers(model, plan)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.mixed_precision == "fp16" else None
    result = TrainResult()
    batches = _cycle(train_loader)
    rank_every = max(1, cfg.rank_log_interval)
    running = running_nll = 0.0
    best = BestCheckpoint(cfg.checkpoint_metric) if cfg.eval_every else None
    first = 0
    if resumed is None:
        result.rank_history.append({"step": 0, **method.rank_report(model)})
    else:
        first, running, running_nll = _restore_loop(resumed, method, model, optimizer, scheduler, scaler, result, best)
        result.resumed_from = first
        for _ in range(first * cfg.grad_accum):  # the batches already trained on (the loader's own seeded order)
            next(batches)
        resumable.set_rng_state(resumed["rng"], device)
        if on_log:
            for record in result.loss_history:
                on_log(record)
    bar = progress_bar(range(first, plan.total_steps), plan.total_steps - first, f"train {method.name}", progress)
    _synchronize(device)
    start = time.perf_counter() - result.wall_time_s - result.val_time_s  # a resumed run's earlier sittings count
    for step in bar:
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        epoch = micro[-1][0]
        lr = float(optimizer.param_groups[0]["lr"])  # the rate this step uses (the scheduler moves it after)
        out = train_step(
            method,
            model,
            optimizer,
            [b for _, b in micro],
            step,
            device=device,
            train=cfg,
            scheduler=scheduler,
            scaler=scaler,
        )
        loss_value, logs, step_logs = out.loss, out.logs, out.step_logs
        running = loss_value if step == 0 else 0.9 * running + 0.1 * loss_value
        nll = float(logs.get("nll", loss_value))
        running_nll = nll if step == 0 else 0.9 * running_nll + 0.1 * nll
        scores = {}
        if best is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == plan.total_steps):
            scores = _score_checkpoint(method, model, val_loader, device, step + 1, cfg.seed, result)
            best.offer(step + 1, scores, model, optimizer)
        if scores or (step + 1) % max(1, cfg.log_every) == 0 or step + 1 == plan.total_steps:
            record = {"step": step + 1, "epoch": epoch, "loss": loss_value, "lr": lr, **logs, **step_logs, **scores}
            result.loss_history.append(record)
            if on_log:
                on_log(record)
        if step_logs:
            result.step_logs.append({"step": step + 1, **step_logs})
        if (step + 1) % rank_every == 0 or step + 1 == plan.total_steps:
            result.rank_history.append({"step": step + 1, **method.rank_report(model)})
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{running:.4f}")
        if saving and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < plan.total_steps:
            _synchronize(device)
            written = time.perf_counter()
            result.wall_time_s = written - start - result.val_time_s  # training time so far
            state = _loop_state(
                step + 1, running, running_nll, method, model, optimizer, scheduler, scaler, result, best
            )
            resumable.save_checkpoint(checkpoint_dir, method, model, {**state, "rng": resumable.rng_state(device)})
            start += time.perf_counter() - written  # writing is not training time
            if on_checkpoint:
                on_checkpoint(step + 1)
    _synchronize(device)
    result.steps = plan.total_steps
    result.wall_time_s = time.perf_counter() - start - result.val_time_s
    if best is not None:
        best.restore(model, optimizer)
        result.best_step, result.best_scores = best.step, best.scores
    result.time_per_step_s = result.wall_time_s / max(1, plan.total_steps)
    result.final_loss = running
    result.final_nll = running_nll
    return result


def _loop_state(
    step: int,
    running: float,
    running_nll: float,
    method: AdapterMethod,
    model: ClassifierModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    result: TrainResult,
    best: BestCheckpoint | None = None,
) -> dict[str, Any]:
    """Everything the loop carries from one step to the next, as :func:`resumable.save_checkpoint` stores it."""
    return {
        "step": step,
        "running": running,
        "running_nll": running_nll,
        "method": method.training_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "result": {k: v for k, v in vars(result).items()},
        "best": vars(best) if best is not None else None,
    }


def _restore_loop(
    state: dict[str, Any],
    method: AdapterMethod,
    model: ClassifierModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    result: TrainResult,
    best: BestCheckpoint | None,
) -> tuple[int, float, float]:
    """Put a checkpoint's loop state back; returns (steps done, running loss, running NLL)."""
    method.load_training_state(model, state["method"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    if best is not None and state["best"] is not None:
        for key, value in state["best"].items():
            setattr(best, key, value)
    return int(state["step"]), float(state["running"]), float(state["running_nll"])


def _score_checkpoint(
    method: AdapterMethod,
    model: ClassifierModel,
    val_loader: Iterable[Any],
    device: torch.device,
    step: int,
    seed: int,
    result: TrainResult,
) -> dict[str, float]:
    """``val_*`` metrics of the method's predictive now, train mode restored after.

    ``predict(seed=...)`` forks the RNG (training draws stay as without scoring) and gives every
    checkpoint the same posterior draws, so checkpoints differ by their weights, not by MC noise.
    """
    start = time.perf_counter()
    probs, labels = predict(method, model, val_loader, device=device, progress=False, seed=seed)
    model.train()
    metrics = classification_metrics(probs, labels)
    scores = {f"val_{k}": metrics[k] for k in ("accuracy", "nll", "ece", "brier")}
    result.val_history.append({"step": step, **scores})
    result.val_time_s += time.perf_counter() - start
    return scores


@torch.no_grad()
def predict(
    method: AdapterMethod,
    model: ClassifierModel,
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    n_samples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-predictive probabilities ``[N, n_classes]`` and labels ``[N]`` over ``loader``.

    ``seed``: torch's RNG (CPU and ``device``) is seeded with it for this pass and restored after, so
    every sampled predictive (BayesLoRA, BLoB, MC dropout, IVON, Laplace nn) draws the same samples
    whenever the same model predicts the same data: a reloaded adapter reproduces the trial's
    predictions exactly on CPU. The bench passes the trial seed.
    """
    probs, labels, _ = _predict(method, model, loader, n_samples, device, progress, seed, keep_samples=False)
    return probs, labels


@torch.no_grad()
def predict_with_samples(
    method: AdapterMethod,
    model: ClassifierModel,
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    n_samples: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`predict` plus the predictive's per-sample probabilities ``[S, N, n_classes]`` (``None`` for a
    predictive that averages no draws: deterministic or closed form), from the same draws
    (:mod:`lrvd.sample_record`); the probabilities equal :func:`predict`'s at the same ``seed``."""
    return _predict(method, model, loader, n_samples, device, progress, seed, keep_samples=True)


def _predict(
    method: AdapterMethod,
    model: ClassifierModel,
    loader: Iterable[dict[str, torch.Tensor]],
    n_samples: int | None,
    device: torch.device | str | None,
    progress: bool,
    seed: int | None,
    keep_samples: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if seed is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return _predict(method, model, loader, n_samples, device, progress, None, keep_samples)
    model.to(device)
    model.eval()
    probs, labels, samples = [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in progress_bar(loader, total, f"predict {method.name}", progress):
        batch = move_batch(batch, device)
        if keep_samples:
            with recording() as draws:
                p = method.predict_proba(model, batch, n_samples)
            samples.append(stacked(draws))
        else:
            p = method.predict_proba(model, batch, n_samples)
        probs.append(p.float().cpu())
        labels.append(batch["labels"].cpu())
    if not probs:
        raise LRVDError("the evaluation loader yielded no batches (empty evaluation set?)")
    kept = [s for s in samples if s is not None]
    if kept and (len(kept) < len(samples) or len({s.shape[0] for s in kept}) > 1):
        raise LRVDError(f"{method.name}: its predictive recorded a different number of draws per batch")
    return torch.cat(probs), torch.cat(labels), torch.cat(kept, dim=1) if kept else None
