"""The per-step table of ``bench cost``: every registered method on one fixed batch, interleaved.

Each measurement round times one training step (:func:`lrvd.training.train_step`, ``fit``'s step,
``on_step_end`` included and also timed on its own) of every method in turn, so clock, thermal and
neighbour drift hit all methods alike. The first ``warmup`` rounds are discarded. The plan has
``T = 5 × rounds`` steps and the timed steps are ``T/5 … 2T/5``: inside AdaLoRA's budget-allocation
window (0.12 T … 0.48 T) and past BayesLoRA's first KL-ramp steps, so schedule-driven work is timed.

Then, in separate passes so the probes do not perturb the timings: the peak memory of one step
(resident tensors + the step's transient peak; CUDA ``max_memory_allocated``, CPU peak RSS through
:mod:`lrvd_bench.memory`), ``after_training`` for ``posthoc_fit`` methods (seconds and training
epochs), and prediction: one deterministic pass, the S-sample predictive as the method runs it by
default, and for methods with ``mc_chunk`` also all S samples batched in one pass and one sample
per pass; each timed (interleaved rounds) and its peak memory probed once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrvd_bench.cost.harness import (
    CostConfig,
    Entry,
    build_entry,
    cpu_timed,
    load_inputs,
    plan_and_spec,
    run_step,
    timed,
)
from lrvd_bench.cost.stats import (
    REFERENCE,
    add_ratios,
    epoch_units,
    median_iqr,
    paired_ratio_iqr,
    ratio,
    steps_per_epoch,
)
from lrvd_bench.memory import peak_memory_mb, reset_peak_memory


def pin_malloc_mmap_threshold(nbytes: int = 64 * 1024) -> bool:
    """glibc: serve allocations > ``nbytes`` by mmap, so freed activations go back to the OS and the
    next probe's RSS window sees a step's activations again (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(nbytes)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def resident_bytes(model, optimizer) -> int:
    """Parameters + buffers of the model + every tensor in the optimizer state."""
    import torch

    tensors = list(model.parameters()) + list(model.buffers())

    def collect(obj: Any) -> None:  # AdamW keeps tensors in state[p]; IVON also in its param groups
        if torch.is_tensor(obj):
            tensors.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                collect(v)

    collect(list(optimizer.state.values()))
    collect([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    return tensor_bytes(tensors)


def peak_mib(fn: Callable[[], Any], device: Any) -> float:
    """Transient peak memory of ``fn()`` above the level before it, in MiB (NaN where unmeasurable)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not reset_peak_memory(device):
        return math.nan
    fn()
    return peak_memory_mb(device)


def step_memory(e: Entry, batch, step: int, device, plan) -> tuple[float, float]:
    """(resident + transient step peak, transient step peak) in MiB for one training step."""
    e.optimizer.zero_grad(set_to_none=True)
    transient = peak_mib(lambda: run_step(e, batch, step, device, plan), device)
    e.optimizer.zero_grad(set_to_none=True)
    return resident_bytes(e.model, e.optimizer) / 2**20 + transient, transient


def with_param(method, name: str, value: Any, fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``method.params.<name>`` temporarily set to ``value``."""
    old = getattr(method.params, name)
    setattr(method.params, name, value)
    try:
        return fn()
    finally:
        setattr(method.params, name, old)


def prediction_modes(e: Entry, batch, n_samples: int) -> list[tuple[str, Callable[[], Any]]]:
    """(mode, call): ``pred_det`` one deterministic pass; ``pred_s`` the S-sample predictive as the
    method runs it by default; with ``mc_chunk``: ``pred_batched`` (all S in one pass) and ``pred_seq``
    (one sample per pass)."""
    params = e.method.Params
    fields = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    modes: list[tuple[str, Callable[[], Any]]] = [("pred_det", lambda: e.method.predict_proba(e.model, batch, 0))]
    if "n_samples" in fields:
        modes.append(("pred_s", lambda: e.method.predict_proba(e.model, batch, n_samples)))
        if "mc_chunk" in fields:
            for mode, chunk in (("pred_batched", n_samples), ("pred_seq", 1)):
                modes.append(
                    (
                        mode,
                        lambda c=chunk: with_param(
                            e.method, "mc_chunk", c, lambda: e.method.predict_proba(e.model, batch, n_samples)
                        ),
                    )
                )
    return modes


def measure(
    cfg: CostConfig,
    *,
    backbone: Any = None,
    train_loader: Any = None,
    n_train: int | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the interleaved measurement; returns (one row per method, run info).

    ``backbone`` / ``train_loader`` / ``n_train`` may be given (tests: a config-built tiny model and a
    toy loader); otherwise they come from ``cfg.model`` / ``cfg.task``.
    """
    import torch

    from lrvd.registry import list_methods
    from lrvd.training import move_batch, resolve_device, seed_everything

    device = resolve_device(cfg.device)
    seed_everything(0)
    inputs = load_inputs(cfg, backbone, train_loader, n_train)
    n_train = inputs.n_train
    batch = move_batch(next(iter(inputs.train_loader)), device)
    names = list(cfg.methods or list_methods())
    rounds = cfg.warmup + cfg.steps
    total_steps = 5 * rounds
    offset = total_steps // 5
    plan, spec = plan_and_spec(cfg, total_steps, n_train)
    if device.type != "cuda":
        pin_malloc_mmap_threshold()

    entries: list[Entry] = []
    for name in names:
        seed_everything(0)
        try:
            entries.append(build_entry(name, cfg, inputs.base, spec, plan, device))
        except Exception as err:  # a broken method must not hide the others' numbers
            log(f"bench cost: {name}: attach failed: {type(err).__name__}: {err}")
            entries.append(Entry(name, None, None, None, None, error=f"attach: {type(err).__name__}: {err}"[:200]))
    live = lambda: [e for e in entries if not e.error]  # noqa: E731

    # 1. training steps, round-robin
    log(f"bench cost: {len(entries)} methods × {rounds} interleaved training rounds ({cfg.warmup} warm-up)")
    for rnd in range(rounds):
        for e in live():
            try:
                hook: list[float] = []
                elapsed, cpu = cpu_timed(
                    lambda e=e, h=hook, step=offset + rnd: h.append(run_step(e, batch, step, device, plan)), device
                )
            except Exception as err:
                e.error = f"train: {type(err).__name__}: {err}"[:200]
                log(f"bench cost: {e.name}: {e.error}")
                continue
            if rnd >= cfg.warmup:
                e.step_times.append(elapsed)
                e.step_cpu_times.append(cpu)
                e.hook_times.append(hook[0])
        if (rnd + 1) % 5 == 0 or rnd + 1 == rounds:
            log(f"bench cost: training round {rnd + 1}/{rounds}")

    # 2. peak memory of one step per method (separate pass: the probes must not perturb the timings)
    for e in live():
        try:
            e.row["peak_mib"], e.row["step_peak_mib"] = step_memory(e, batch, offset + rounds, device, plan)
        except Exception as err:
            log(f"bench cost: {e.name}: memory probe failed: {type(err).__name__}: {err}")

    # 3. after_training (methods with the posthoc_fit capability), timed once
    spe = steps_per_epoch(n_train, cfg.batch_size)
    for e in live():
        if not e.method.posthoc_fit:
            continue
        e.model.eval()
        try:
            args = (e.model, inputs.train_loader)
            if e.method.needs_validation:
                args = (e.model, inputs.train_loader, inputs.train_loader)  # cost only: the train loader stands in
            e.row["after_training_s"], e.row["after_training_cpu_s"] = cpu_timed(
                lambda a=args, m=e.method: m.after_training(*a), device
            )
            log(f"bench cost: {e.name} after_training {e.row['after_training_s']:.1f} s")
        except Exception as err:
            e.row["after_training_error"] = f"{type(err).__name__}: {err}"[:200]
            log(f"bench cost: {e.name}: after_training failed: {e.row['after_training_error']}")

    # 4. prediction, round-robin over (method, mode); then one peak-memory probe per (method, mode)
    modes = [(e, mode, fn) for e in live() for mode, fn in prediction_modes(e, batch, cfg.n_samples)]
    for e in live():
        e.model.eval()
    times: dict[tuple[str, str], list[float]] = {}
    log(f"bench cost: {len(modes)} prediction modes × {cfg.pred_repeats + 1} rounds (1 warm-up)")
    with torch.no_grad():
        for rnd in range(cfg.pred_repeats + 1):
            for e, mode, fn in modes:
                if e.row.get(f"{mode}_error"):
                    continue
                try:
                    t = timed(fn, device)
                except Exception as err:
                    e.row[f"{mode}_error"] = f"{type(err).__name__}: {err}"[:200]
                    log(f"bench cost: {e.name}: {mode} failed: {e.row[f'{mode}_error']}")
                    continue
                if rnd > 0:
                    times.setdefault((e.name, mode), []).append(t)
                else:
                    log(f"bench cost: warm-up {e.name} {mode}: {t:.2f} s")
        for e, mode, fn in modes:
            if not e.row.get(f"{mode}_error"):
                e.row[f"{mode}_peak_mib"] = resident_bytes(e.model, e.optimizer) / 2**20 + peak_mib(fn, device)

    # 5. rows
    rows = [make_row(e, times, spe) for e in entries]
    add_ratios(rows, ["step_ms", "peak_mib"])
    ref = next((e for e in entries if e.name == REFERENCE and not e.error), None)
    for e, row in zip(entries, rows):
        if ref is not None and not e.error:
            row["step_ratio_iqr"] = paired_ratio_iqr(e.step_times, ref.step_times)
            row["step_cpu_ratio"] = median_iqr([ratio(a, b) for a, b in zip(e.step_cpu_times, ref.step_cpu_times)])[0]
            row["step_cpu_ratio_iqr"] = paired_ratio_iqr(e.step_cpu_times, ref.step_cpu_times)
    info = run_info(
        cfg, device, n_train=n_train, steps_per_epoch=spe, batch=batch, total_steps=total_steps, offset=offset
    )
    for e in entries:  # free before returning (the models hold the backbone copies)
        e.model = e.optimizer = e.method = None
    gc.collect()
    return rows, info


def make_row(e: Entry, times: dict[tuple[str, str], list[float]], spe: int) -> dict[str, Any]:
    """One table row: step median/IQR, memory, parameter counts, prediction times, memory and ratios."""
    row: dict[str, Any] = {"method": e.name}
    if e.error:
        row["error"] = e.error
        return row
    med, iqr = median_iqr(e.step_times)
    row.update(
        step_ms=1e3 * med,
        step_iqr_ms=1e3 * iqr,
        hook_ms=1e3 * median_iqr(e.hook_times)[0],
        n_steps=len(e.step_times),
        step_cpu_ms=1e3 * median_iqr(e.step_cpu_times)[0],
    )
    row.update({k: v for k, v in e.row.items() if k in ("peak_mib", "step_peak_mib")})
    counts = e.method.parameter_counts(e.model)
    row["trainable"], row["variational"] = int(counts.get("trainable", 0)), int(counts.get("variational", 0))
    for mode in ("pred_det", "pred_s", "pred_batched", "pred_seq"):
        if (e.name, mode) in times:
            row[f"{mode}_ms"], row[f"{mode}_iqr_ms"] = (1e3 * v for v in median_iqr(times[(e.name, mode)]))
        if f"{mode}_peak_mib" in e.row:
            row[f"{mode}_peak_mib"] = e.row[f"{mode}_peak_mib"]
    for mode in ("pred_s", "pred_batched", "pred_seq"):
        if f"{mode}_ms" in row:
            row[f"{mode}_ratio"] = ratio(row[f"{mode}_ms"], row.get("pred_det_ms", math.nan))
            row[f"{mode}_iqr_ratio"] = ratio(row[f"{mode}_iqr_ms"], row.get("pred_det_ms", math.nan))
        if f"{mode}_peak_mib" in row:
            row[f"{mode}_peak_ratio"] = ratio(row[f"{mode}_peak_mib"], row.get("pred_det_peak_mib", math.nan))
    if "after_training_s" in e.row:
        row["after_training_s"], row["after_training_cpu_s"] = e.row["after_training_s"], e.row["after_training_cpu_s"]
        row["after_training_epochs"] = epoch_units(e.row["after_training_s"], med, spe)
        # the same in CPU time (fit CPU s / (median step CPU s x steps per epoch)): readable under load
        row["after_training_cpu_epochs"] = epoch_units(e.row["after_training_cpu_s"], row["step_cpu_ms"] / 1e3, spe)
    row.update({k: v for k, v in e.row.items() if k.endswith("_error")})
    return row


def run_info(cfg: CostConfig, device, **extra: Any) -> dict[str, Any]:
    """Hardware, software versions and the configuration, for the header of the table."""
    import torch

    from lrvd_bench.provenance import package_versions

    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "config": dataclasses.asdict(cfg),
        **package_versions(),
    }
    batch = extra.pop("batch", None)
    if batch is not None and "input_ids" in batch:
        info["batch_shape"] = "x".join(str(s) for s in batch["input_ids"].shape)
    info.update(extra)
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU {platform.machine()}"
