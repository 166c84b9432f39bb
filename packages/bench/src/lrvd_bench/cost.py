"""``bench cost``: the compute cost of every registered method on one backbone and batch shape.

All methods run in one process on the same fixed batch, **interleaved**: each measurement round
times one training step of every method in turn (round-robin), so clock/thermal/neighbour drift
hits all methods alike. The first ``warmup`` rounds are discarded; the remaining ``steps`` rounds
give the median and inter-quartile range (IQR) of the step time. A step is exactly the body of
:func:`lrvd.training.fit` (zero_grad, ``step_context``, forward, ``training_loss``, backward,
clipping, optimizer and scheduler step) **plus** ``on_step_end`` (pruning, AdaLoRA importance and
budget allocation), which is also reported on its own (``hook_ms``).

The plan has ``T = 5 × rounds`` steps and the timed steps are ``T/5 … 2T/5``: inside AdaLoRA's
budget-allocation window (0.12 T … 0.48 T) and past BayesLoRA's first KL-ramp steps, so schedule-
driven work is part of what is timed.

Reported per method (one row each, ``*_ratio`` columns relative to the ``lora`` row of the same run):

* ``step_ms`` median / IQR over ``steps`` rounds, ``on_step_end`` median, ratio to LoRA;
* ``peak_mib``: the method's resident state (parameters, buffers, optimizer state, counted from the
  tensors) + the transient peak of one training step above the pre-step level. CUDA: from
  ``max_memory_allocated``; CPU: from the process's peak RSS (``VmHWM`` reset through
  ``/proc/self/clear_refs``, with glibc's mmap threshold pinned to 64 KiB so that freed activations
  return to the OS). The CPU number is an RSS estimate (allocator caching, shared pages), good for
  ratios between methods of one run, not for absolute capacity planning;
* ``trainable`` / ``variational`` parameter counts (``method.parameter_counts``);
* prediction: one deterministic pass (``predict_proba(n_samples=0)``) and, for methods whose
  ``Params`` have ``n_samples``, the S-sample predictive; methods with ``mc_chunk`` (BayesLoRA) are
  timed both batched (``mc_chunk=0``) and sequential (``mc_chunk=1``); ratios to the deterministic pass;
* ``after_training`` time for methods that override it (Laplace fit + prior tuning, temperature fit),
  in seconds and in training epochs (the method's median step time × steps per epoch of the train
  set used).

``bench cost --ray-overhead runs/NAME`` instead compares a finished sweep's wall time with the sum of
its trials' own times (``trials.csv``).
"""

from __future__ import annotations

import copy
import csv
import ctypes
import dataclasses
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrvd_bench.memory import peak_memory_mb, reset_peak_memory

REFERENCE = "lora"

# -- pure arithmetic (unit-tested against hand-computed numbers) -----------------------------------


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """Median and inter-quartile range (Q3 − Q1, linear interpolation as ``numpy.percentile``)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan, math.nan

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.5), q(0.75) - q(0.25)


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when either is missing or the reference is 0."""
    try:
        value, reference = float(value), float(reference)
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(value) or not math.isfinite(reference) or reference == 0:
        return math.nan
    return value / reference


def add_ratios(rows: list[dict[str, Any]], columns: Sequence[str], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """Add ``<column>_ratio`` = row value / the ``reference`` method's value for each column (in place)."""
    ref = next((r for r in rows if r.get("method") == reference), None)
    for row in rows:
        for col in columns:
            row[f"{col}_ratio"] = ratio(row.get(col, math.nan), ref.get(col, math.nan) if ref else math.nan)
    return rows


def steps_per_epoch(n_train: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps per pass over ``n_train`` examples (last partial batch counts, as a DataLoader)."""
    return max(1, math.ceil(n_train / batch_size) // max(1, grad_accum))


def epoch_units(seconds: float, step_seconds: float, n_steps_per_epoch: int) -> float:
    """``seconds`` expressed in training epochs of ``n_steps_per_epoch`` steps of ``step_seconds``."""
    return ratio(seconds, step_seconds * n_steps_per_epoch)


def ray_overhead(rows: Sequence[dict[str, Any]], sweep_wall_s: float, concurrency: int = 1) -> dict[str, float]:
    """Sweep wall time vs the trials' own times.

    ``trial_s`` sums each trial's ``wall_time_s`` (the whole trial body: model load, data, fit, eval)
    or, where missing, ``train_time_s + posthoc_time_s + eval_time_s``; ``compute_s`` sums only the
    latter. ``overhead_s = sweep_wall_s − trial_s / concurrency`` is the time Ray Tune (start-up,
    scheduling, actor start, checkpoints) adds on top; ``overhead_fraction`` divides it by the wall time.
    Rows with ``reused_members`` (ensembles assembled after the sweep from other trials' adapters) did
    not run under Ray and are left out: their times are their members' sums.
    """

    def num(row: dict[str, Any], key: str) -> float:
        try:
            v = float(row.get(key, math.nan))
        except (TypeError, ValueError):
            return math.nan
        return v if math.isfinite(v) else math.nan

    rows = [r for r in rows if not str(r.get("reused_members") or "").strip()]
    trial_s = compute_s = 0.0
    for row in rows:
        parts = [num(row, k) for k in ("train_time_s", "posthoc_time_s", "eval_time_s")]
        compute = sum(p for p in parts if not math.isnan(p))
        wall = num(row, "wall_time_s")
        trial_s += compute if math.isnan(wall) else wall
        compute_s += compute
    overhead = sweep_wall_s - trial_s / max(1, concurrency)
    return {
        "n_trials": float(len(rows)), "sweep_wall_s": float(sweep_wall_s), "concurrency": float(concurrency),
        "trial_s": trial_s, "compute_s": compute_s, "overhead_s": overhead,
        "overhead_fraction": ratio(overhead, sweep_wall_s),
    }


# -- formatting ------------------------------------------------------------------------------------
COLUMNS = [
    ("method", "method"), ("step_ms", "step ms (median)"), ("step_iqr_ms", "IQR ms"),
    ("step_ms_ratio", "× LoRA"), ("hook_ms", "on_step_end ms"), ("peak_mib", "peak MiB"),
    ("peak_mib_ratio", "× LoRA"), ("trainable", "trainable"), ("variational", "variational"),
    ("pred_det_ms", "predict det. ms"), ("pred_s_ms", "predict S ms"), ("pred_s_ratio", "S / det."),
    ("pred_seq_ms", "S seq. ms"), ("pred_seq_ratio", "seq. / det."),
    ("after_training_s", "after_training s"), ("after_training_epochs", "epochs"),
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(rows: Sequence[dict[str, Any]], columns=COLUMNS) -> str:
    cols = [(k, h) for k, h in columns if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, math.nan)) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def write_rows(rows: Sequence[dict[str, Any]], out: str | Path, header: str = "", columns=COLUMNS) -> list[Path]:
    """``out`` ending in .md: Markdown only; otherwise CSV at ``out`` and Markdown beside it (.md)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if out.suffix != ".md":
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        written.append(out)
    md = out if out.suffix == ".md" else out.with_suffix(".md")
    md.write_text(header + to_markdown(rows, columns))
    written.append(md)
    return written


# -- memory helpers --------------------------------------------------------------------------------
def _pin_malloc_mmap_threshold(nbytes: int = 64 * 1024) -> bool:
    """glibc: serve allocations > ``nbytes`` by mmap (returned to the OS on free; no dynamic threshold)."""
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


# -- the measurement -------------------------------------------------------------------------------
@dataclass
class CostConfig:
    model: str = "minilm"
    task: str = "arc-e"
    batch_size: int = 8
    max_length: int = 64
    steps: int = 20
    warmup: int = 3
    n_samples: int = 10
    pred_repeats: int = 5
    limit_train: int = 64
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
class _Entry:
    name: str
    method: Any
    model: Any
    optimizer: Any
    scheduler: Any
    step_times: list[float] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(entry: _Entry, batch, step: int, device, plan) -> float:
    """One optimizer step through :func:`lrvd.training.train_step` (``fit``'s step); returns on_step_end seconds."""
    from lrvd.training import train_step

    out = train_step(entry.method, entry.model, entry.optimizer, [batch] * plan.train.grad_accum, step,
                     device=device, train=plan.train, scheduler=entry.scheduler, time_hook=True)
    return out.hook_s


def _timed(fn: Callable[[], Any], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _overrides(cls: type, hook: str) -> bool:
    from lrvd.protocol import MethodBase

    own = getattr(cls, hook, None)
    return own is not None and own is not getattr(MethodBase, hook, None)


def load_inputs(cfg: CostConfig, backbone: Any = None, train_loader: Any = None,
                n_train: int | None = None) -> tuple[Any, Any, int]:
    """(base model, train loader, N): the given ones (tests), else ``cfg.model`` on ``cfg.task``."""
    if backbone is None:
        from lrvd_bench.backbones import load_backbone
        from lrvd_bench.loaders import make_loaders
        from lrvd_bench.tasks import get_task

        task = get_task(cfg.task)
        backbone = load_backbone(cfg.model, task)
        data = make_loaders(task, backbone, data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                            max_length=cfg.max_length, limit_train=cfg.limit_train, limit_eval=cfg.batch_size)
        train_loader, n_train = data.train_loader, data.n_train
    from lrvd_bench.backbones import Backbone

    base = backbone.model if isinstance(backbone, Backbone) else backbone
    return base, train_loader, int(n_train if n_train is not None else len(train_loader.dataset))


def plan_and_spec(cfg: CostConfig, total_steps: int, n_train: int) -> tuple[Any, Any]:
    """The TrainPlan and AdapterSpec every method of one measurement shares."""
    from lrvd.protocol import AdapterSpec, TrainConfig, TrainPlan

    train_cfg = TrainConfig(lr=cfg.lr, head_lr=cfg.head_lr, warmup_ratio=cfg.warmup_ratio, max_steps=total_steps,
                            batch_size=cfg.batch_size)
    spec_kwargs: dict[str, Any] = {"r": cfg.r, "alpha": cfg.alpha}
    if cfg.target_modules:
        spec_kwargs["target_modules"] = list(cfg.target_modules)
    return TrainPlan(total_steps=total_steps, n_train=n_train, train=train_cfg), AdapterSpec(**spec_kwargs)


def build_entry(name: str, cfg: CostConfig, base: Any, spec: Any, plan: Any, device: Any) -> _Entry:
    """Method ``name`` attached to its own copy of ``base``, in train mode, with its optimizer."""
    from lrvd.registry import get_method

    method = get_method(name)(**cfg.method_params.get(name, {}))
    model = method.attach(copy.deepcopy(base), spec, plan)
    model.to(device)
    model.train()
    opt, sched = method.configure_optimizers(model, plan)
    return _Entry(name, method, model, opt, sched)


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
    base, train_loader, n_train = load_inputs(cfg, backbone, train_loader, n_train)
    batch = move_batch(next(iter(train_loader)), device)
    names = list(cfg.methods or list_methods())
    rounds = cfg.warmup + cfg.steps
    total_steps = 5 * rounds
    offset = total_steps // 5
    plan, spec = plan_and_spec(cfg, total_steps, n_train)
    on_cpu = device.type != "cuda"
    if on_cpu:
        _pin_malloc_mmap_threshold()

    entries: list[_Entry] = []
    for name in names:
        seed_everything(0)
        try:
            entries.append(build_entry(name, cfg, base, spec, plan, device))
        except Exception as err:  # a broken method must not hide the others' numbers
            log(f"bench cost: {name}: attach failed: {type(err).__name__}: {err}")
            entries.append(_Entry(name, None, None, None, None, error=f"attach: {type(err).__name__}: {err}"[:200]))
    live = lambda: [e for e in entries if not e.error]  # noqa: E731

    # 1. training steps, round-robin
    log(f"bench cost: {len(entries)} methods × {rounds} interleaved training rounds ({cfg.warmup} warm-up)")
    for rnd in range(rounds):
        for e in live():
            try:
                t0 = time.perf_counter()
                hook = _train_step(e, batch, offset + rnd, device, plan)
                elapsed = time.perf_counter() - t0
            except Exception as err:
                e.error = f"train: {type(err).__name__}: {err}"[:200]
                log(f"bench cost: {e.name}: {e.error}")
                continue
            if rnd >= cfg.warmup:
                e.step_times.append(elapsed)
                e.hook_times.append(hook)
        if (rnd + 1) % 5 == 0 or rnd + 1 == rounds:
            log(f"bench cost: training round {rnd + 1}/{rounds}")

    # 2. peak memory of one step per method (separate pass: the probes must not perturb the timings)
    for e in live():
        try:
            e.row["peak_mib"], e.row["step_peak_mib"] = _step_memory(e, batch, offset + rounds, device, plan)
        except Exception as err:
            log(f"bench cost: {e.name}: memory probe failed: {type(err).__name__}: {err}")

    # 3. after_training (methods overriding it), timed once
    spe = steps_per_epoch(n_train, cfg.batch_size)
    for e in live():
        if not _overrides(type(e.method), "after_training"):
            continue
        e.model.eval()
        try:
            args = (e.model, train_loader)
            if getattr(e.method, "needs_validation", False):
                args = (e.model, train_loader, train_loader)  # cost only: the train loader stands in
            e.row["after_training_s"] = _timed(lambda a=args, m=e.method: m.after_training(*a), device)
            log(f"bench cost: {e.name} after_training {e.row['after_training_s']:.1f} s")
        except Exception as err:
            e.row["after_training_error"] = f"{type(err).__name__}: {err}"[:200]
            log(f"bench cost: {e.name}: after_training failed: {e.row['after_training_error']}")

    # 4. prediction, round-robin over (method, mode)
    modes: list[tuple[_Entry, str, Callable[[], Any]]] = []
    for e in live():
        e.model.eval()
        fields = {f.name for f in dataclasses.fields(e.method.Params)} if dataclasses.is_dataclass(e.method.Params) else set()
        modes.append((e, "pred_det", lambda e=e: e.method.predict_proba(e.model, batch, 0)))
        if "n_samples" in fields:
            if "mc_chunk" in fields:
                modes.append((e, "pred_s", lambda e=e: _with_param(e.method, "mc_chunk", 0,
                              lambda: e.method.predict_proba(e.model, batch, cfg.n_samples))))
                modes.append((e, "pred_seq", lambda e=e: _with_param(e.method, "mc_chunk", 1,
                              lambda: e.method.predict_proba(e.model, batch, cfg.n_samples))))
            else:
                modes.append((e, "pred_s", lambda e=e: e.method.predict_proba(e.model, batch, cfg.n_samples)))
    times: dict[tuple[str, str], list[float]] = {}
    log(f"bench cost: {len(modes)} prediction modes × {cfg.pred_repeats + 1} rounds (1 warm-up)")
    with torch.no_grad():
        for rnd in range(cfg.pred_repeats + 1):
            for e, mode, fn in modes:
                if e.row.get(f"{mode}_error"):
                    continue
                try:
                    t = _timed(fn, device)
                except Exception as err:
                    e.row[f"{mode}_error"] = f"{type(err).__name__}: {err}"[:200]
                    log(f"bench cost: {e.name}: {mode} failed: {e.row[f'{mode}_error']}")
                    continue
                if rnd > 0:
                    times.setdefault((e.name, mode), []).append(t)
                else:
                    log(f"bench cost: warm-up {e.name} {mode}: {t:.2f} s")

    # 5. rows
    rows = []
    for e in entries:
        row: dict[str, Any] = {"method": e.name}
        if e.error:
            row["error"] = e.error
            rows.append(row)
            continue
        med, iqr = median_iqr(e.step_times)
        row.update(step_ms=1e3 * med, step_iqr_ms=1e3 * iqr, hook_ms=1e3 * median_iqr(e.hook_times)[0],
                   n_steps=len(e.step_times))
        row.update({k: v for k, v in e.row.items() if k in ("peak_mib", "step_peak_mib")})
        counts = e.method.parameter_counts(e.model)
        row["trainable"], row["variational"] = int(counts.get("trainable", 0)), int(counts.get("variational", 0))
        for mode in ("pred_det", "pred_s", "pred_seq"):
            if (e.name, mode) in times:
                row[f"{mode}_ms"] = 1e3 * median_iqr(times[(e.name, mode)])[0]
        if "pred_s_ms" in row:
            row["pred_s_ratio"] = ratio(row["pred_s_ms"], row.get("pred_det_ms", math.nan))
        if "pred_seq_ms" in row:
            row["pred_seq_ratio"] = ratio(row["pred_seq_ms"], row.get("pred_det_ms", math.nan))
        if "after_training_s" in e.row:
            row["after_training_s"] = e.row["after_training_s"]
            row["after_training_epochs"] = epoch_units(e.row["after_training_s"], med, spe)
        row.update({k: v for k, v in e.row.items() if k.endswith("_error")})
        rows.append(row)
    add_ratios(rows, ["step_ms", "peak_mib"])
    info = run_info(cfg, device, n_train=n_train, steps_per_epoch=spe, batch=batch, total_steps=total_steps,
                    offset=offset)
    for e in entries:  # free before returning (the models hold the backbone copies)
        e.model = e.optimizer = e.method = None
    gc.collect()
    return rows, info


def _with_param(method, name: str, value: Any, fn: Callable[[], Any]) -> Any:
    old = getattr(method.params, name)
    setattr(method.params, name, value)
    try:
        return fn()
    finally:
        setattr(method.params, name, old)


def _step_memory(e: _Entry, batch, step: int, device, plan) -> tuple[float, float]:
    """(resident + transient step peak, transient step peak) in MiB for one training step."""
    import torch

    e.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(e, batch, step, device, plan)
        transient = torch.cuda.max_memory_allocated(device) - before
    else:
        if not reset_peak_memory(device):
            return math.nan, math.nan
        _train_step(e, batch, step, device, plan)
        transient = peak_memory_mb(device) * 2**20
    e.optimizer.zero_grad(set_to_none=True)
    resident = resident_bytes(e.model, e.optimizer)
    return (resident + transient) / 2**20, transient / 2**20


def run_info(cfg: CostConfig, device, **extra: Any) -> dict[str, Any]:
    import torch

    from lrvd_bench.trial import package_versions

    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "config": dataclasses.asdict(cfg), **package_versions(),
    }
    batch = extra.pop("batch", None)
    if batch is not None and "input_ids" in batch:
        info["batch_shape"] = "x".join(str(s) for s in batch["input_ids"].shape)
    info.update(extra)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU {platform.machine()}"


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's cost targets, evaluated on this run (GPU targets are only checked on a GPU run)."""
    by = {r["method"]: r for r in rows}

    def get(method: str, key: str) -> float:
        v = by.get(method, {}).get(key, math.nan)
        return float(v) if isinstance(v, (int, float)) else math.nan

    checks = [
        ("BayesLoRA train step ≤ 1.05 × LoRA", get("bayeslora", "step_ms_ratio"), 1.05),
        ("BayesLoRA peak memory ≤ 1.02 × LoRA", get("bayeslora", "peak_mib_ratio"), 1.02),
        ("AdaLoRA-IVON step ≤ 0.9 × AdaLoRA", ratio(get("adalora-ivon", "step_ms"), get("adalora", "step_ms")), 0.9),
        ("BayesLoRA 10-sample predictive ≤ 4 × deterministic (batched)", get("bayeslora", "pred_s_ratio"), 4.0),
    ]
    return [{"target": t, "observed": v, "limit": lim, "met": (v <= lim) if math.isfinite(v) else None}
            for t, v, lim in checks]


def targets_markdown(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["| target | observed | met |", "|---|---|---|"]
    for c in checks:
        met = "–" if c["met"] is None else ("yes" if c["met"] else "no")
        lines.append(f"| {c['target']} | {_fmt(c['observed'])} | {met} |")
    return "\n".join(lines) + "\n"


# -- Ray overhead from a run dir -------------------------------------------------------------------
def ray_overhead_from_run(
    run_dir: str | Path, sweep_wall_s: float | None = None, concurrency: int | None = None
) -> dict[str, float]:
    """Read ``RUN_DIR/trials.csv``; the sweep wall time is ``sweep_wall_s`` or, by default, the time
    from ``config.yaml`` (written when the sweep starts) to ``trials.csv`` (written when it ends).
    ``concurrency`` defaults to the run's ``max_concurrent_trials``."""
    from lrvd_bench.errors import BenchError

    run_dir = Path(run_dir)
    trials = run_dir / "trials.csv"
    if not trials.exists():
        raise BenchError(f"{run_dir} has no trials.csv (is it a finished bench run directory?)")
    with trials.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if sweep_wall_s is None:
        start_file = run_dir / "config.yaml"
        if not start_file.exists():
            raise BenchError(f"{run_dir} has no config.yaml to date the sweep start; pass --sweep-seconds")
        sweep_wall_s = trials.stat().st_mtime - start_file.stat().st_mtime
    if concurrency is None:
        from lrvd_bench.config import read_yaml

        config_file = run_dir / "config.yaml"
        concurrency = int((read_yaml(config_file) if config_file.exists() else {}).get("max_concurrent_trials") or 1)
    return ray_overhead(rows, float(sweep_wall_s), concurrency)


# -- CLI glue --------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    d = CostConfig()
    parser.add_argument("--model", default=d.model, help="backbone alias, hub id or local dir (default: minilm)")
    parser.add_argument("--task", default=d.task, help="task whose batch shape is used (default: arc-e)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--steps", type=int, default=d.steps, help="timed training rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="discarded warm-up rounds (default 3)")
    parser.add_argument("--n-samples", type=int, default=d.n_samples, help="S of the sampled predictive (default 10)")
    parser.add_argument("--pred-repeats", type=int, default=d.pred_repeats, help="timed prediction rounds")
    parser.add_argument("--limit-train", type=int, default=d.limit_train,
                        help="training examples for after_training and the epoch unit (default 64)")
    parser.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    parser.add_argument("--data-dir", help="task data directory (default: bundled/auto)")
    parser.add_argument("--out", help="CSV path (Markdown written beside it as .md); a .md path writes only Markdown")
    parser.add_argument("--whole-run", type=int, metavar="STEPS",
                        help="instead: whole training runs of STEPS steps (default methods: lora,bayeslora)")
    parser.add_argument("--run-repeats", type=int, default=2, help="with --whole-run: alternating repeats")
    parser.add_argument("--r", type=int, default=d.r, help="adapter rank (default 8)")
    parser.add_argument("--lr", type=float, default=d.lr, help="adapter learning rate (default 1e-3)")
    parser.add_argument("--head-lr", type=float, default=None, help="task-head learning rate (default: --lr)")
    parser.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="LR warm-up fraction")
    parser.add_argument("--target-modules", help="comma-separated adapter targets (default: the backbone's)")
    parser.add_argument("--param", nargs="+", metavar="METHOD.NAME=VALUE", default=[],
                        help="method hyper-parameters, e.g. bayeslora.prune_every=25")
    parser.add_argument("--ray-overhead", metavar="RUN_DIR", help="instead: Ray Tune overhead of a finished sweep")
    parser.add_argument("--sweep-seconds", type=float, help="with --ray-overhead: the sweep's wall time")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="with --ray-overhead: trials run at once (default: the run's max_concurrent_trials)")


def method_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["bayeslora.prune_every=25"]`` -> ``{"bayeslora": {"prune_every": 25}}`` (values parsed as YAML)."""
    from lrvd_bench.config import parse_set
    from lrvd_bench.errors import BenchError

    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_set(list(items)).items():
        method, sep, name = key.partition(".")
        if not sep or not name:
            raise BenchError(f"--param expects METHOD.NAME=VALUE, got {key!r}")
        out.setdefault(method, {})[name] = value
    return out


def _main_whole_run(cfg: CostConfig, args) -> int:
    from lrvd_bench.whole_run import WHOLE_RUN_COLUMNS, measure_whole_run

    rows = measure_whole_run(cfg, args.whole_run, args.run_repeats)
    header = (f"<!-- bench cost --whole-run {args.whole_run}: batch {cfg.batch_size} x {cfg.max_length} tokens, "
              f"r={cfg.r}, {cfg.limit_train} training examples, {args.run_repeats} repeats -->\n")
    print(header + to_markdown(rows, WHOLE_RUN_COLUMNS), end="")
    if args.out:
        for path in write_rows(rows, args.out, header=header, columns=WHOLE_RUN_COLUMNS):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def main(args) -> int:
    if args.ray_overhead:
        result = ray_overhead_from_run(args.ray_overhead, args.sweep_seconds, args.concurrency)
        rows = [{"quantity": k, "value": v} for k, v in result.items()]
        columns = [("quantity", "quantity"), ("value", "value")]
        print(to_markdown(rows, columns), end="")
        if args.out:
            write_rows(rows, args.out, columns=columns)
        return 0
    cfg = CostConfig(
        model=args.model, task=args.task, batch_size=args.batch_size, max_length=args.max_length, steps=args.steps,
        warmup=args.warmup, n_samples=args.n_samples, pred_repeats=args.pred_repeats, limit_train=args.limit_train,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
        device=args.device, data_dir=args.data_dir, r=args.r, lr=args.lr, head_lr=args.head_lr,
        warmup_ratio=args.warmup_ratio, method_params=method_params(args.param),
        target_modules=[m.strip() for m in args.target_modules.split(",")] if args.target_modules else None,
    )
    if args.whole_run:
        return _main_whole_run(cfg, args)
    rows, info = measure(cfg)
    header = (f"<!-- bench cost: {info['device']}, torch {info.get('torch')}, transformers {info.get('transformers')}, "
              f"peft {info.get('peft')}, {info['torch_threads']} torch threads, batch {info.get('batch_shape')} -->\n")
    print(header + to_markdown(rows), end="")
    checks = targets(rows)
    print("\n" + targets_markdown(checks), end="")
    if args.out:
        for path in write_rows(rows, args.out, header=header):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0
