"""Post-hoc methods on the adapter LoRA's trial trained, instead of training the same adapter again.

Temperature scaling and Laplace-LoRA (``trains_like = "lora"``, ``posthoc_fit``) train exactly
LoRA's adapter and only then fit something at the trained weights. When the sweep also runs the
LoRA trial whose spec hashes like the post-hoc trial's *training* spec (the post-hoc spec with
``method`` set to ``lora`` and only the method parameters LoRA knows, defaults filled in), the
post-hoc trial loads that trial's saved adapter and skips training. The sweep runs such trials in a
later Tune stage, after LoRA's trials (:func:`lrvd_bench.stage_plan.plan_final`).

A post-hoc trial whose LoRA trial failed, or left no adapter, trains its own (the retrain path):
one method's failure never costs another its result. The reused trial's row carries LoRA's training
fields (final losses, steps, ``train_time_s``: what the method costs to train, not zero) and
``reused_from`` (LoRA's trial id); its ``train_log.csv`` and ``ranks.csv`` are copies of LoRA's.
Both paths seed the global RNG with the trial seed before ``after_training``, so a reused trial
predicts exactly what the retrained one would.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from lrvd.errors import LRVDError
from lrvd_bench.config import TrialSpec
from lrvd_bench.trial_folder import RESULT_FILE

#: ``{post-hoc trial_id: LoRA trial_id}`` of a sweep's final stage, written before its trials run
REUSE_FILE = "posthoc_reuse.json"
#: the files of the LoRA trial the reusing trial copies (its training record)
COPIED_FILES = ("train_log.csv", "ranks.csv")
#: the result-row fields that describe training, taken from the LoRA trial
TRAINING_FIELDS = (
    "final_train_loss",
    "final_train_nll",
    "steps",
    "best_step",
    "train_time_s",
    "time_per_step_s",
)


def base_method(method: str) -> str | None:
    """The method whose trained adapter ``method`` can reuse: its ``trains_like`` when it subclasses
    it and only adds a post-hoc fit (the ensemble trains several adapters: not this)."""
    from lrvd.registry import get_method

    cls = get_method(method)
    base = getattr(cls, "trains_like", None)
    if not base or not getattr(cls, "posthoc_fit", False):
        return None
    return base if issubclass(cls, get_method(base)) else None


def training_spec(spec: TrialSpec, base: str) -> TrialSpec:
    """``spec`` as the ``base`` trial that trains the same adapter: method ``base``, its method
    parameters restricted to ``base``'s and completed with their defaults (so ``{}`` and an explicit
    default hash alike)."""
    from lrvd.registry import get_method

    params_cls = get_method(base).Params
    names = {f.name for f in dataclasses.fields(params_cls)}
    params = params_cls(**{k: v for k, v in spec.method_params.items() if k in names})
    return dataclasses.replace(spec, method=base, method_params=dataclasses.asdict(params))


def plan_posthoc(specs: list[TrialSpec]) -> dict[str, str]:
    """``{post-hoc trial_id: base trial_id}`` for each final-stage post-hoc spec whose training spec
    hashes like a spec of the sweep's base method that saves its adapter."""
    bases = {base_method(s.method) for s in specs if s.stage == "final"} - {None}
    by_hash = {
        training_spec(s, s.method).config_hash: s
        for s in specs
        if s.method in bases and s.stage == "final" and s.save_adapter
    }
    plan: dict[str, str] = {}
    for spec in specs:
        base = base_method(spec.method) if spec.stage == "final" else None
        if base is None:
            continue
        source = by_hash.get(training_spec(spec, base).config_hash)
        if source is not None:
            plan[spec.trial_id] = source.trial_id
    return plan


def write_plan(run_dir: Path, plan: dict[str, str]) -> None:
    (Path(run_dir) / REUSE_FILE).write_text(json.dumps(plan, indent=1))


def read_plan(run_dir: Path) -> dict[str, str]:
    path = Path(run_dir) / REUSE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def ready_source(run_dir: Path, spec: TrialSpec) -> Path | None:
    """The finished base trial folder ``spec`` reuses (with its adapter), or None: then it trains."""
    source_id = read_plan(run_dir).get(spec.trial_id)
    if source_id is None:
        return None
    folder = Path(run_dir) / "trials" / source_id
    try:
        row = json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None  # not run, failed or unfinished: the post-hoc trial trains its own adapter
    ok = row.get("trial_id") == source_id and row.get("status") == "ok"
    return folder if ok and (folder / "adapter").is_dir() else None


def load_trained_adapter(model: Any, source: Path, base: str) -> None:
    """Load the adapter weights ``base``'s trial saved into ``model`` (attached by a method that
    trains like ``base``, with the same adapter spec). Refuses another method's adapter, and one
    that leaves a trainable weight of ``model`` unset."""
    from lrvd.adapter_io import read_adapter

    meta, native, _ = read_adapter(Path(source) / "adapter")
    if meta.get("method") != base:
        raise LRVDError(f"adapter at {source} was saved by {meta.get('method')!r}, not {base!r}")
    loaded = model.load_state_dict(native, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    unset = sorted(trainable & set(loaded.missing_keys))
    if loaded.unexpected_keys or unset:
        raise LRVDError(f"adapter at {source} does not fit this model: {(loaded.unexpected_keys or unset)[:3]}")


def reused_training(source: Path, trial_dir: Path) -> dict[str, Any]:
    """Copy the base trial's training record into ``trial_dir``; its training fields for the row."""
    for name in COPIED_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(trial_dir) / name)
    row = json.loads((Path(source) / RESULT_FILE).read_text())
    fields = {k: row.get(k) for k in TRAINING_FIELDS}
    fields.update({k: v for k, v in row.items() if k.startswith("checkpoint_")})
    return {**fields, "reused_from": row["trial_id"]}
