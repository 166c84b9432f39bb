"""Per-method hyper-parameter selection on the shared validation split, then the final stage.

A sweep with a ``selection:`` block runs in two stages, both as Ray Tune trials::

    selection:
      search_space:                      # per method: KEY -> the grid values, in order
        lora:      {train.lr: [3.0e-4, 1.0e-3, 3.0e-3]}
        bayeslora: {train.lr: [3.0e-4, 1.0e-3], kl_scale: [1.0e-6, 1.0e-5]}
      metric: val_nll                    # or val_accuracy
      seeds: [0]

1. **selection**: every grid point of every listed method, on every task, with the selection
   seeds. These trials train on the training rows, score on the sweep's validation split and never
   load the evaluation split (:func:`lrvd_bench.trial.run_trial`, ``stage == "selection"``).
2. **final**: the sweep's own seeds, each method with the point that scored best on its task
   (mean over selection seeds; ties go to the earlier grid point, grid order = the Cartesian product
   in the order keys and values are written). Methods without a grid run with the config's values.

A KEY is ``train.<field>`` (``train.lr``), ``adapter.<field>``, a top-level trial field such as
``max_length``, or a bare name, which is the method's own hyper-parameter (``kl_scale`` means
``method_params.bayeslora.kl_scale``). The choice is written to ``selection.json`` and travels
with each final trial as its ``search_point`` (shown in the leaderboard). The block's keys, metrics
and KEYs, and the methods' own hyper-parameters at every grid value, are checked with the rest of
the config (:func:`lrvd_bench.method_checks.check_selection`).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from lrvd_bench.method_checks import SELECTION_METRICS, selection_dotted_key
from lrvd_bench.trial_folder import finished_row
from lrvd_bench.trial_spec import TrialSpec

SELECTION_FILE = "selection.json"


def grid_points(method: str, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of ``grid`` in written order, as dotted-key points."""
    keys = [selection_dotted_key(method, k) for k in grid]
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def selection_specs(config: Any) -> list[TrialSpec]:
    """Stage 1: method × task × grid point × selection seed, for the methods with a grid."""
    block = config.selection
    seeds = block.get("seeds", [0])
    out = []
    for spec in _base_specs(config, seeds):
        grid = block["search_space"].get(spec.method)
        if grid:
            out += [spec.with_overrides(point).with_stage("selection") for point in grid_points(spec.method, grid)]
    return out


def _base_specs(config: Any, seeds: list[int]) -> list[TrialSpec]:
    import dataclasses

    return dataclasses.replace(config, seeds=list(seeds)).expand()


def choose(run_dir: Path, config: Any, specs: list[TrialSpec]) -> dict[str, dict[str, Any]]:
    """``{task: {method: {"point", "score", "n_seeds", "scores"}}}`` from the selection trials' rows.

    Scores a point by the mean of its ok seeds' ``metric``; a point without one is skipped; the best
    wins, ties (and NaN) going to the earlier grid point.
    """
    block = config.selection
    metric = block.get("metric", "val_nll")
    higher = SELECTION_METRICS[metric]
    out: dict[str, dict[str, Any]] = {}
    for task in config.tasks:
        for method, grid in block["search_space"].items():
            best: dict[str, Any] | None = None
            scores = []
            for point in grid_points(method, grid):
                values = []
                for spec in specs:
                    if (
                        spec.task == task
                        and spec.method == method
                        and all(spec.search_point.get(k) == v for k, v in point.items())
                    ):
                        row = finished_row(Path(run_dir) / "trials" / spec.trial_id, spec)
                        value = (row or {}).get(metric)
                        if isinstance(value, (int, float)) and math.isfinite(value):
                            values.append(float(value))
                score = sum(values) / len(values) if values else None
                scores.append({"point": point, "score": score, "n_seeds": len(values)})
                if score is not None and (best is None or (score > best["score"] if higher else score < best["score"])):
                    best = {"point": point, "score": score, "n_seeds": len(values)}
            out.setdefault(task, {})[method] = {
                **(
                    best
                    or {
                        "point": {},
                        "score": None,
                        "n_seeds": 0,
                        "note": "no selection trial succeeded: the final stage uses the config's values",
                    }
                ),
                "metric": metric,
                "scores": scores,
            }
        _inherit(out.setdefault(task, {}), config, metric)
    return out


def _inherit(chosen: dict[str, dict[str, Any]], config: Any, metric: str) -> None:
    """Give each method without a grid whose adapter is trained as another method's
    (``trains_like``: temperature scaling, Laplace-LoRA and the ensemble on LoRA) that method's chosen
    training settings, so it post-processes the same adapter LoRA's row reports; the other
    method's own hyper-parameters (``method_params.*``) are not carried over."""
    from lrvd.registry import get_method

    for method in config.methods:
        source = get_method(method).trains_like
        if method in chosen or source not in chosen or not chosen[source].get("n_seeds"):
            continue
        point = {k: v for k, v in chosen[source]["point"].items() if not k.startswith("method_params.")}
        if point:
            chosen[method] = {
                "point": point,
                "score": None,
                "n_seeds": 0,
                "note": f"{source}'s choice (trained as {source})",
                "metric": metric,
                "scores": [],
            }


def final_specs(config: Any, chosen: dict[str, dict[str, Any]]) -> list[TrialSpec]:
    """Stage 2: the sweep's specs, each method with its chosen point on that task."""
    out = []
    for spec in config.expand():
        point = chosen.get(spec.task, {}).get(spec.method, {}).get("point")
        out.append(spec.with_overrides(point) if point else spec)
    return out


def write_choice(run_dir: Path, chosen: dict[str, dict[str, Any]]) -> None:
    (Path(run_dir) / SELECTION_FILE).write_text(json.dumps(chosen, indent=2, default=str))


def summary_lines(chosen: dict[str, dict[str, Any]]) -> list[str]:
    """``selected for lora on arc-e: train.lr=0.001 (val_nll 1.2031)`` per method and task."""
    lines = []
    for task, methods in chosen.items():
        for method, choice in methods.items():
            point = (
                ", ".join(
                    f"{k.rpartition('.')[2] if k.startswith('method_params.') else k}={v}"
                    for k, v in choice["point"].items()
                )
                or "config values"
            )
            score = (
                f" ({choice['metric']} {choice['score']:.4f})"
                if choice.get("score") is not None
                else f" ({choice.get('note', '')})"
            )
            edges = grid_edges(choice)
            warn = f"; at the edge of its grid in {', '.join(edges)}: the best value may lie beyond" if edges else ""
            lines.append(f"selected for {method} on {task}: {point}{score}{warn}")
    return lines


def grid_edges(choice: dict[str, Any]) -> list[str]:
    """The numeric KEYs (of three values or more) whose chosen value is the grid's smallest or largest:
    a choice at the edge says the grid did not bracket the optimum, which a reader should know."""
    values: dict[str, list[Any]] = {}
    for entry in choice.get("scores", []):
        for key, value in entry["point"].items():
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    return [
        key.rpartition(".")[2] if key.startswith("method_params.") else key
        for key, grid in values.items()
        if len(grid) > 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid)
        and choice["point"].get(key) in (min(grid), max(grid))
    ]
