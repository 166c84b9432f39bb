"""``bench cost --whole-run STEPS``: a whole training run of each method against LoRA's.

The per-step table (:mod:`~lrvd_bench.cost.measure`) times steps at a fixed rank. This asks whether
BayesLoRA's in-training pruning makes a *whole run* cheaper than LoRA's. Each method trains from the
same start for ``STEPS`` optimizer steps over the real training loader (``fit``'s step,
:func:`lrvd.training.train_step`, ``on_step_end`` pruning included). Runs alternate between methods
(A, B, A, B, …) for ``repeats`` rounds so drift hits all alike.

Per method: median run seconds, its ratio to LoRA's median (and the IQR of the per-round ratios,
each against the LoRA run of the same round), the median step of the first and of the last quarter
of the run (``late / early`` < 1: later steps got cheaper), trainable parameters at the start and the
end (pruned ranks leave the matrices: the physical size the steps pay for), the adapter rank at the
end (``rank_report``: effective rank for BayesLoRA), and the accuracy of the method's default
predictive on ``limit_eval`` evaluation examples after training (not part of the run time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lrvd_bench.cost.harness import CostConfig, build_entry, load_inputs, plan_and_spec, run_step
from lrvd_bench.cost.stats import REFERENCE, add_ratios, median_iqr, paired_ratio_iqr, quarter_medians, ratio


def summarize(name: str, runs: Sequence[Sequence[float]], params_start: int, params_end: int) -> dict[str, Any]:
    """One row from the per-step seconds of each repeat (the run time is the sum of its steps)."""
    totals = [sum(r) for r in runs]
    early, late = zip(*(quarter_medians(r) for r in runs)) if runs else ((), ())
    row = {
        "method": name,
        "run_s": median_iqr(totals)[0],
        "run_iqr_s": median_iqr(totals)[1],
        "early_step_ms": 1e3 * median_iqr(early)[0],
        "late_step_ms": 1e3 * median_iqr(late)[0],
        "params_start": params_start,
        "params_end": params_end,
        "repeats": len(runs),
    }
    row["late_over_early"] = ratio(row["late_step_ms"], row["early_step_ms"])
    return row


def same_order(loader: Any, seed: int) -> Any:
    """``loader`` with its shuffling generator reset to ``seed``: the methods of one repeat then see the
    same batches in the same order (a shared generator would hand each run the next permutation)."""
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    return loader


def _cycle(loader: Any):
    while True:
        yield from loader


def evaluate(entry: Any, eval_loader: Any, device: Any) -> float:
    """Accuracy of the method's default predictive (``predict_proba`` with its own n_samples)."""
    from lrvd.training import predict

    probs, labels = predict(entry.method, entry.model, eval_loader, device=device, progress=False)
    return float((probs.argmax(-1) == labels).float().mean())


def measure_whole_run(
    cfg: CostConfig,
    steps: int,
    repeats: int = 2,
    *,
    backbone: Any = None,
    train_loader: Any = None,
    eval_loader: Any = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train each of ``cfg.methods`` (default: LoRA and BayesLoRA) for ``steps`` steps, ``repeats`` times.

    A run takes minutes at adapter-heavy placements, hence the progress bar (``progress=False``: none).
    """
    from lrvd.training import move_batch, progress_bar, resolve_device, seed_everything

    device = resolve_device(cfg.device)
    inputs = load_inputs(cfg, backbone, train_loader, eval_loader=eval_loader)
    names = list(cfg.methods or [REFERENCE, "bayeslora"])
    plan, spec = plan_and_spec(cfg, steps, inputs.n_train)
    runs: dict[str, list[list[float]]] = {n: [] for n in names}
    ends: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    sizes: dict[str, tuple[int, int]] = {}
    for rep in range(repeats):
        for name in names:
            seed_everything(rep)
            entry = build_entry(name, cfg, inputs.base, spec, plan, device)
            params_start = int(entry.method.parameter_counts(entry.model)["trainable"])
            batches, times = _cycle(same_order(inputs.train_loader, rep)), []
            for step in progress_bar(range(steps), steps, f"whole run {name} {rep + 1}/{repeats}", progress):
                batch = move_batch(next(batches), device)
                t0 = time.perf_counter()
                run_step(entry, batch, step, device, plan)
                times.append(time.perf_counter() - t0)
            runs[name].append(times)
            sizes[name] = (params_start, int(entry.method.parameter_counts(entry.model)["trainable"]))
            end: dict[str, float] = {}
            report = entry.method.rank_report(entry.model)
            if report:
                end["ranks_end"] = float(sum(report.values()))
            if inputs.eval_loader is not None:
                end["accuracy"] = evaluate(entry, inputs.eval_loader, device)
            ends[name].append(end)
            log(
                f"bench cost --whole-run: {name} repeat {rep + 1}/{repeats}: {sum(times):.1f} s, "
                f"trainable {sizes[name][0]} → {sizes[name][1]}, {end}"
            )
            del entry
    rows = []
    for n in names:
        row = summarize(n, runs[n], *sizes[n])
        for key in ("ranks_end", "accuracy"):
            values = [e[key] for e in ends[n] if key in e]
            if values:
                row[key] = median_iqr(values)[0]
        if REFERENCE in runs:
            row["run_ratio_iqr"] = paired_ratio_iqr([sum(r) for r in runs[n]], [sum(r) for r in runs[REFERENCE]])
        rows.append(row)
    add_ratios(rows, ["run_s"])
    return rows
