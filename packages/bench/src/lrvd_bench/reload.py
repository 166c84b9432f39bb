"""Rebuild a finished trial from its folder and predict again exactly as the trial did.

``spec.json`` → method, task, backbone, loaders (same limits and seeds, so the same evaluation split)
→ ``method.attach`` → ``method.load_adapter`` (the saved peft adapter + sidecar). :func:`repredict`
then predicts with the settings the adapter's sidecar records (``evaluation``: n_samples and the
prediction seed), so on CPU it reproduces the trial's ``predictions.npz`` bit for bit: every sampled
predictive draws from torch's RNG seeded with the trial seed (:func:`lrvd.training.predict`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_spec(trial_dir: str | Path, name: str = "spec.json"):
    from lrvd_bench.config import TrialSpec

    return TrialSpec.from_dict(json.loads((Path(trial_dir) / name).read_text()))


def rebuild(trial_dir: str | Path, *, with_data: bool = False):
    """(method, model, eval_loader) of a finished trial, with its saved adapter loaded (CPU);
    ``with_data``: (method, model, loaders) with both ``train_loader`` and ``eval_loader``."""
    trial_dir = Path(trial_dir)
    method, model, data = rebuild_from(load_spec(trial_dir), trial_dir / "adapter")
    return (method, model, data) if with_data else (method, model, data.eval_loader)


def load_export(folder: str | Path):
    """(method, model, data) of a ``bench export`` folder: the full method, posterior included, on the
    backbone and task its ``trial_spec.json`` names (``data``: the trial's loaders, same rows)."""
    folder = Path(folder)
    method, model, data = rebuild_from(load_spec(folder, "trial_spec.json"), folder)
    return method, model.eval(), data


def rebuild_from(spec, adapter_dir: str | Path):
    """(method, model, data) of ``spec`` with the adapter saved in ``adapter_dir`` loaded (CPU)."""
    from lrvd.registry import get_method
    from lrvd_bench.trial_inputs import trial_inputs

    method = get_method(spec.method)(**spec.method_params)
    inputs = trial_inputs(spec)
    model = method.attach(inputs.backbone.model, inputs.adapter, inputs.plan)
    method.load_adapter(model, adapter_dir)
    return method, model, inputs.data


def evaluation_settings(trial_dir: str | Path) -> dict[str, Any]:
    """How the trial predicted: the adapter sidecar's ``evaluation`` block, else the spec's values."""
    from lrvd.adapter_io import has_adapter, read_meta

    spec = load_spec(trial_dir)
    adapter = Path(trial_dir) / "adapter"
    recorded = read_meta(adapter).get("evaluation", {}) if has_adapter(adapter) else {}
    return {"n_samples": spec.n_samples, "seed": spec.seed, **recorded}


def repredict(trial_dir: str | Path, device: str = "cpu"):
    """(probs [N, C], labels [N]) of a finished trial's reloaded adapter, predicted as the trial did."""
    from lrvd.training import predict

    settings = evaluation_settings(trial_dir)
    method, model, loader = rebuild(trial_dir)
    return predict(
        method, model, loader, n_samples=settings["n_samples"], device=device, progress=False, seed=settings["seed"]
    )
