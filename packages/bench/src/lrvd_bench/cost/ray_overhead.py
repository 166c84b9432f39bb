"""``bench cost --ray-overhead RUN_DIR``: a finished sweep's wall time against its trials' own times."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrvd_bench.cost.stats import ratio


def ray_overhead(rows: Sequence[dict[str, Any]], sweep_wall_s: float, concurrency: int = 1) -> dict[str, float]:
    """Sweep wall time vs the trials' own times.

    ``trial_s`` sums each trial's ``wall_time_s`` (the whole trial body: model load, data, fit, eval)
    or, where missing, ``train_time_s + posthoc_time_s + eval_time_s``; ``compute_s`` sums only the
    latter. ``overhead_s = sweep_wall_s − trial_s / concurrency`` is the time Ray Tune (start-up,
    scheduling, actor start, checkpoints) adds on top; ``overhead_fraction`` divides it by the wall time.
    Rows with ``reused_members`` (ensembles assembled after the sweep from other trials' adapters) did
    not run under Ray and are left out: their times are their members' sums. Rows with ``reused_from``
    (post-hoc methods on a LoRA trial's adapter) ran under Ray but did not train: their
    ``train_time_s`` is the LoRA trial's, so it is left out of their compute time.
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
        spent = ("posthoc_time_s", "eval_time_s")
        if not str(row.get("reused_from") or "").strip():
            spent = ("train_time_s", *spent)
        parts = [num(row, k) for k in spent]
        compute = sum(p for p in parts if not math.isnan(p))
        wall = num(row, "wall_time_s")
        trial_s += compute if math.isnan(wall) else wall
        compute_s += compute
    overhead = sweep_wall_s - trial_s / max(1, concurrency)
    return {
        "n_trials": float(len(rows)),
        "sweep_wall_s": float(sweep_wall_s),
        "concurrency": float(concurrency),
        "trial_s": trial_s,
        "compute_s": compute_s,
        "overhead_s": overhead,
        "overhead_fraction": ratio(overhead, sweep_wall_s),
    }


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
