"""What the per-step table (:mod:`~lrvd_bench.cost.measure`) and the whole runs
(:mod:`~lrvd_bench.cost.whole_run`) share: the configuration, the inputs, one method on its own copy
of the backbone, and one timed training step (:func:`lrvd.training.train_step`, the step of ``fit``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CostConfig:
    """One ``bench cost`` measurement; the common knobs carry ``bench run``'s names and defaults."""

    model: str = "minilm"
    task: str = "arc-e"
    batch_size: int = 8
    max_length: int = 64
    steps: int = 20
    warmup: int = 3
    n_samples: int = 10
    pred_repeats: int = 5
    limit_train: int = 64
    limit_eval: int = 200
    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] | None = None
    methods: list[str] | None = None
    device: str = "auto"
    data_dir: str | None = None
    lr: float = 1e-3
    head_lr: float | None = None
    warmup_ratio: float = 0.06
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Inputs:
    """The frozen base model and the data every method of one measurement shares."""

    base: Any
    train_loader: Any
    n_train: int
    eval_loader: Any = None


@dataclass
class Entry:
    """One method under measurement: its own model copy, optimizer, and what was measured so far."""

    name: str
    method: Any
    model: Any
    optimizer: Any
    scheduler: Any
    step_times: list[float] = field(default_factory=list)
    step_cpu_times: list[float] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any) -> float:
    """Wall seconds of ``fn()``, CUDA work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def cpu_timed(fn: Callable[[], Any], device: Any) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn()``. On a shared CPU the wall time also
    counts the time the process waited for a core; the CPU time does not, so its ratios between
    interleaved methods stay readable when neighbours load the machine (on CUDA use the wall time)."""
    c0 = time.process_time()
    wall = timed(fn, device)
    return wall, time.process_time() - c0


def load_inputs(
    cfg: CostConfig, backbone: Any = None, train_loader: Any = None, n_train: int | None = None, eval_loader: Any = None
) -> Inputs:
    """The given model and loaders (tests: a config-built tiny model), else ``cfg.model`` on ``cfg.task``.

    A hub backbone's task head is drawn when it loads, so loading is seeded: every invocation, and
    every ``bench cost`` mode, measures the same head.
    """
    if backbone is None:
        from lrvd.training import seed_everything
        from lrvd_bench.backbones import load_backbone
        from lrvd_bench.loaders import make_loaders
        from lrvd_bench.tasks import get_task

        task = get_task(cfg.task)
        seed_everything(0)
        backbone = load_backbone(cfg.model, task)
        data = make_loaders(
            task,
            backbone,
            data_dir=cfg.data_dir,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            limit_train=cfg.limit_train,
            limit_eval=cfg.limit_eval,
        )
        train_loader, n_train, eval_loader = data.train_loader, data.n_train, data.eval_loader
    from lrvd_bench.backbones import Backbone

    base = backbone.model if isinstance(backbone, Backbone) else backbone
    n = int(n_train if n_train is not None else len(train_loader.dataset))
    return Inputs(base, train_loader, n, eval_loader)


def plan_and_spec(cfg: CostConfig, total_steps: int, n_train: int) -> tuple[Any, Any]:
    """The TrainPlan and AdapterConfig every method of one measurement shares."""
    from lrvd.protocol import AdapterConfig, TrainConfig, TrainPlan

    train_cfg = TrainConfig(
        lr=cfg.lr, head_lr=cfg.head_lr, warmup_ratio=cfg.warmup_ratio, max_steps=total_steps, batch_size=cfg.batch_size
    )
    spec_kwargs: dict[str, Any] = {"r": cfg.r, "alpha": cfg.alpha}
    if cfg.target_modules:
        spec_kwargs["target_modules"] = list(cfg.target_modules)
    return TrainPlan(total_steps=total_steps, n_train=n_train, train=train_cfg), AdapterConfig(**spec_kwargs)


def build_entry(name: str, cfg: CostConfig, base: Any, spec: Any, plan: Any, device: Any) -> Entry:
    """Method ``name`` attached to its own copy of ``base``, in train mode, with its optimizer."""
    from lrvd.registry import get_method

    method = get_method(name)(**cfg.method_params.get(name, {}))
    model = method.attach(copy.deepcopy(base), spec, plan)
    model.to(device)
    model.train()
    opt, sched = method.configure_optimizers(model, plan)
    return Entry(name, method, model, opt, sched)


def run_step(entry: Entry, batch: dict[str, Any], step: int, device: Any, plan: Any) -> float:
    """One optimizer step of ``entry`` exactly as ``fit`` runs it; returns the on_step_end seconds."""
    from lrvd.training import train_step

    out = train_step(
        entry.method,
        entry.model,
        entry.optimizer,
        [batch] * plan.train.grad_accum,
        step,
        device=device,
        train=plan.train,
        scheduler=entry.scheduler,
        time_hook=True,
    )
    return out.hook_s
