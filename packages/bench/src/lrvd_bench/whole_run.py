"""``bench cost --whole-run STEPS``: a whole training run of each method against LoRA's.

The per-step table of :mod:`lrvd_bench.cost` times steps at a fixed rank. This asks the other
question of issue 8: does BayesLoRA's in-training pruning make a *whole run* cheaper than LoRA's?
Each method trains from the same start for ``STEPS`` optimizer steps over the real training loader
(the body of :func:`lrvd.training.fit`, ``on_step_end`` pruning included, via ``cost._train_step``).
Runs alternate between methods (A, B, A, B, …) for ``repeats`` rounds so drift hits all alike.

Per method: median run seconds and its ratio to LoRA, the median step time of the first and of the
last quarter of the run (``late / early`` < 1 means later steps got cheaper), and the trainable
parameters at the end against the start (``parameter_counts``: pruned ranks leave the matrices, so
this is the physical size the steps pay for, where ``rank_report`` is BayesLoRA's effective rank).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lrvd_bench.cost import REFERENCE, CostConfig, _Entry, _train_step, add_ratios, median_iqr, ratio


def quarter_medians(step_seconds: Sequence[float]) -> tuple[float, float]:
    """Median step time of the first and of the last quarter of a run (at least one step each)."""
    n = len(step_seconds)
    if n == 0:
        return float("nan"), float("nan")
    q = max(1, n // 4)
    return median_iqr(step_seconds[:q])[0], median_iqr(step_seconds[-q:])[0]


def summarize(name: str, runs: Sequence[Sequence[float]], params_start: int, params_end: int) -> dict[str, Any]:
    """One row from the per-step seconds of each repeat (the run time is the sum of its steps)."""
    totals = [sum(r) for r in runs]
    early, late = zip(*(quarter_medians(r) for r in runs)) if runs else ((), ())
    row = {
        "method": name, "run_s": median_iqr(totals)[0], "run_iqr_s": median_iqr(totals)[1],
        "early_step_ms": 1e3 * median_iqr(early)[0], "late_step_ms": 1e3 * median_iqr(late)[0],
        "params_start": params_start, "params_end": params_end, "repeats": len(runs),
    }
    row["late_over_early"] = ratio(row["late_step_ms"], row["early_step_ms"])
    return row


def _cycle(loader: Any):
    while True:
        yield from loader


def measure_whole_run(
    cfg: CostConfig,
    steps: int,
    repeats: int = 2,
    *,
    backbone: Any = None,
    train_loader: Any = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Train each of ``cfg.methods`` (default: LoRA and BayesLoRA) for ``steps`` steps, ``repeats`` times."""
    from lrvd.protocol import AdapterSpec, TrainConfig, TrainPlan
    from lrvd.registry import get_method
    from lrvd.training import move_batch, resolve_device, seed_everything

    device = resolve_device(cfg.device)
    if backbone is None:
        from lrvd_bench.backbones import load_backbone
        from lrvd_bench.loaders import make_loaders
        from lrvd_bench.tasks import get_task

        task = get_task(cfg.task)
        backbone = load_backbone(cfg.model, task)
        train_loader = make_loaders(task, backbone, data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                                    max_length=cfg.max_length, limit_train=cfg.limit_train,
                                    limit_eval=cfg.batch_size).train_loader
    from lrvd_bench.backbones import Backbone

    base = backbone.model if isinstance(backbone, Backbone) else backbone
    names = list(cfg.methods or [REFERENCE, "bayeslora"])
    plan = TrainPlan(total_steps=steps, n_train=len(train_loader.dataset),
                     train=TrainConfig(lr=cfg.lr, head_lr=cfg.head_lr, warmup_ratio=cfg.warmup_ratio,
                                       max_steps=steps, batch_size=cfg.batch_size))
    spec_kwargs: dict[str, Any] = {"r": cfg.r, "alpha": cfg.alpha}
    if cfg.target_modules:
        spec_kwargs["target_modules"] = list(cfg.target_modules)
    spec = AdapterSpec(**spec_kwargs)
    runs: dict[str, list[list[float]]] = {n: [] for n in names}
    sizes: dict[str, tuple[int, int]] = {}
    for rep in range(repeats):
        for name in names:
            seed_everything(rep)
            method = get_method(name)(**cfg.method_params.get(name, {}))
            model = method.attach(copy.deepcopy(base), spec, plan).to(device)
            model.train()
            opt, sched = method.configure_optimizers(model, plan)
            entry = _Entry(name, method, model, opt, sched)
            params_start = int(method.parameter_counts(model)["trainable"])
            batches, times = _cycle(train_loader), []
            for step in range(steps):
                batch = move_batch(next(batches), device)
                t0 = time.perf_counter()
                _train_step(entry, batch, step, device, plan)
                times.append(time.perf_counter() - t0)
            runs[name].append(times)
            sizes[name] = (params_start, int(method.parameter_counts(model)["trainable"]))
            log(f"bench cost --whole-run: {name} repeat {rep + 1}/{repeats}: {sum(times):.1f} s, "
                f"trainable {sizes[name][0]} → {sizes[name][1]}")
            del entry, model, opt, sched, method
    rows = [summarize(n, runs[n], *sizes[n]) for n in names]
    add_ratios(rows, ["run_s"])
    return rows


WHOLE_RUN_COLUMNS = [
    ("method", "method"), ("run_s", "run s (median)"), ("run_iqr_s", "IQR s"), ("run_s_ratio", "× LoRA"),
    ("early_step_ms", "first-quarter step ms"), ("late_step_ms", "last-quarter step ms"),
    ("late_over_early", "late / early"), ("params_start", "trainable at start"), ("params_end", "trainable at end"),
    ("repeats", "repeats"),
]
