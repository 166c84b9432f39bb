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

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lrvd_bench.cost import (
    REFERENCE, CostConfig, _train_step, add_ratios, build_entry, load_inputs, median_iqr, plan_and_spec, ratio,
)


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
    from lrvd.training import move_batch, resolve_device, seed_everything

    device = resolve_device(cfg.device)
    base, train_loader, n_train = load_inputs(cfg, backbone, train_loader)
    names = list(cfg.methods or [REFERENCE, "bayeslora"])
    plan, spec = plan_and_spec(cfg, steps, n_train)
    runs: dict[str, list[list[float]]] = {n: [] for n in names}
    sizes: dict[str, tuple[int, int]] = {}
    for rep in range(repeats):
        for name in names:
            seed_everything(rep)
            entry = build_entry(name, cfg, base, spec, plan, device)
            params_start = int(entry.method.parameter_counts(entry.model)["trainable"])
            batches, times = _cycle(train_loader), []
            for step in range(steps):
                batch = move_batch(next(batches), device)
                t0 = time.perf_counter()
                _train_step(entry, batch, step, device, plan)
                times.append(time.perf_counter() - t0)
            runs[name].append(times)
            sizes[name] = (params_start, int(entry.method.parameter_counts(entry.model)["trainable"]))
            log(f"bench cost --whole-run: {name} repeat {rep + 1}/{repeats}: {sum(times):.1f} s, "
                f"trainable {sizes[name][0]} → {sizes[name][1]}")
            del entry
    rows = [summarize(n, runs[n], *sizes[n]) for n in names]
    add_ratios(rows, ["run_s"])
    return rows


WHOLE_RUN_COLUMNS = [
    ("method", "method"), ("run_s", "run s (median)"), ("run_iqr_s", "IQR s"), ("run_s_ratio", "× LoRA"),
    ("early_step_ms", "first-quarter step ms"), ("late_step_ms", "last-quarter step ms"),
    ("late_over_early", "late / early"), ("params_start", "trainable at start"), ("params_end", "trainable at end"),
    ("repeats", "repeats"),
]
