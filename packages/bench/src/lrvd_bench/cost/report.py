"""Tables of ``bench cost``: columns, Markdown/CSV output, and the cost targets checked on a run."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrvd_bench.cost.stats import ratio

#: (row key, Markdown header) of the per-step table.
COLUMNS = [
    ("method", "method"),
    ("step_ms", "step ms (median)"),
    ("step_iqr_ms", "IQR ms"),
    ("step_ms_ratio", "× LoRA"),
    ("step_ratio_iqr", "IQR of × LoRA"),
    ("step_cpu_ms", "step CPU ms"),
    ("step_cpu_ratio", "CPU × LoRA"),
    ("step_cpu_ratio_iqr", "IQR"),
    ("hook_ms", "on_step_end ms"),
    ("peak_mib", "peak MiB"),
    ("peak_mib_ratio", "× LoRA"),
    ("trainable", "trainable"),
    ("variational", "variational"),
    ("pred_det_ms", "predict det. ms"),
    ("pred_s_ms", "predict S ms"),
    ("pred_s_ratio", "S / det."),
    ("pred_s_iqr_ratio", "IQR"),
    ("pred_batched_ms", "S batched ms"),
    ("pred_batched_ratio", "batched / det."),
    ("pred_seq_ms", "S seq. ms"),
    ("pred_seq_ratio", "seq. / det."),
    ("pred_det_peak_mib", "predict det. peak MiB"),
    ("pred_s_peak_mib", "predict S peak MiB"),
    ("pred_s_peak_ratio", "S / det. peak"),
    ("pred_batched_peak_mib", "S batched peak MiB"),
    ("pred_batched_peak_ratio", "batched / det. peak"),
    ("after_training_s", "after_training s"),
    ("after_training_epochs", "epochs"),
    ("after_training_cpu_epochs", "epochs (CPU time)"),
]

#: (row key, Markdown header) of ``--whole-run``.
WHOLE_RUN_COLUMNS = [
    ("method", "method"),
    ("run_s", "run s (median)"),
    ("run_iqr_s", "IQR s"),
    ("run_s_ratio", "× LoRA"),
    ("run_ratio_iqr", "IQR of × LoRA"),
    ("early_step_ms", "first-quarter step ms"),
    ("late_step_ms", "last-quarter step ms"),
    ("late_over_early", "late / early"),
    ("params_start", "trainable at start"),
    ("params_end", "trainable at end"),
    ("ranks_end", "effective rank at end"),
    ("accuracy", "accuracy"),
    ("repeats", "repeats"),
]


def fmt(value: Any) -> str:
    """3 significant digits below 10, one decimal below 100, integers above; '–' for NaN."""
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
    """A Markdown table of the ``columns`` that at least one row has."""
    cols = [(k, h) for k, h in columns if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k, math.nan)) for k, _ in cols) + " |")
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


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cost targets, evaluated on this run (a target whose numbers are missing shows '–')."""
    by = {r["method"]: r for r in rows}

    def get(method: str, key: str) -> float:
        v = by.get(method, {}).get(key, math.nan)
        return float(v) if isinstance(v, (int, float)) else math.nan

    checks = [
        ("BayesLoRA train step ≤ 1.03 × LoRA", get("bayeslora", "step_ms_ratio"), 1.03),
        ("BayesLoRA peak memory ≤ 1.02 × LoRA", get("bayeslora", "peak_mib_ratio"), 1.02),
        ("AdaLoRA-IVON step ≤ 0.9 × AdaLoRA", ratio(get("adalora-ivon", "step_ms"), get("adalora", "step_ms")), 0.9),
        (
            "BayesLoRA S-sample predictive peak ≤ 1.1 × one deterministic pass",
            get("bayeslora", "pred_s_peak_ratio"),
            1.1,
        ),
        (
            "BayesLoRA 10-sample predictive ≤ 4 × deterministic (batched; a GPU target)",
            get("bayeslora", "pred_batched_ratio"),
            4.0,
        ),
    ]
    return [
        {"target": t, "observed": v, "limit": lim, "met": (v <= lim) if math.isfinite(v) else None}
        for t, v, lim in checks
    ]


def targets_markdown(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["| target | observed | met |", "|---|---|---|"]
    for c in checks:
        met = "–" if c["met"] is None else ("yes" if c["met"] else "no")
        lines.append(f"| {c['target']} | {fmt(c['observed'])} | {met} |")
    return "\n".join(lines) + "\n"
