"""``bench export RUN_DIR --method M [--seed S] --out DIR``: one trial's adapter as a self-contained folder.

The folder is what a model hub expects of a peft adapter, plus what the suite needs to reload the
full method::

    adapter_config.json, adapter_model.safetensors   the peft adapter (PeftModel.from_pretrained(base, DIR));
                                                     the trained task head inside as modules_to_save
    <member>/…                                       the ensemble: one named peft adapter per member
    task_head.safetensors                            the task head alone, by its transformers parameter names
    lrvd_adapter.json, lrvd_posterior.safetensors    the sidecar (method, config, posterior; lrvd.adapter_io)
    trial_spec.json, result.json                     the trial's exact spec and result row
    README.md                                        model card: method, base model, task, metrics with 95 %
                                                     bootstrap intervals, config, suite version and commit
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lrvd_bench.errors import BenchError

METRICS = ("accuracy", "ece", "nll", "brier")
N_BOOT = 1000


def find_trial(run_dir: str | Path, method: str, seed: int | None = None) -> Path:
    """The finished trial of ``method`` (and ``seed``; default: the lowest) with a saved adapter."""
    from lrvd.adapter_io import has_adapter

    run_dir = Path(run_dir)
    if not (run_dir / "trials").is_dir():
        raise BenchError(f"{run_dir} is not a bench run directory (no trials/ folder)")
    found: list[tuple[int, str, Path]] = []
    available: set[str] = set()
    for trial in sorted((run_dir / "trials").iterdir()):
        spec_file, result_file = trial / "spec.json", trial / "result.json"
        if not (spec_file.is_file() and result_file.is_file() and has_adapter(trial / "adapter")):
            continue
        spec = json.loads(spec_file.read_text())
        if json.loads(result_file.read_text()).get("status") != "ok":
            continue
        available.add(f"{spec['method']} seed {spec['seed']}")
        if spec["method"] == method and (seed is None or int(spec["seed"]) == seed):
            found.append((int(spec["seed"]), trial.name, trial))
    if not found:
        wanted = f"method {method!r}" + (f" with seed {seed}" if seed is not None else "")
        raise BenchError(
            f"{run_dir} has no finished trial with a saved adapter for {wanted}; available: "
            + (", ".join(sorted(available)) or "none")
        )
    return min(found)[2]


def bootstrap_intervals(
    probs: Any, labels: Any, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, low, high): percentile bootstrap over evaluation examples (seeded).

    The leaderboard's resampling (:mod:`lrvd_bench.paired`) on one trial: the same resamples of the
    questions and the same per-question metric parts, without a reference to subtract.
    """
    import numpy as np

    from lrvd_bench.paired import resample_questions, score_trial

    labels = np.asarray(labels)
    scores = score_trial(probs, labels, resample_questions(len(labels), n_boot, seed))
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    return {m: (scores.point[m], *(float(q) for q in np.quantile(scores.resampled[m], quantiles))) for m in METRICS}


def head_tensors_from_peft(folder: Path) -> dict[str, Any]:
    """The task head (peft ``modules_to_save`` tensors) by its transformers parameter names."""
    from safetensors.torch import load_file

    from lrvd.adapter_io import PEFT_CONFIG, PEFT_PREFIX, PEFT_WEIGHTS

    config = json.loads((folder / PEFT_CONFIG).read_text())
    heads = config.get("modules_to_save") or []
    state = load_file(str(folder / PEFT_WEIGHTS))
    out = {}
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if any(name.startswith(h + ".") for h in heads):
            out[name] = value
    return out


def export_trial(trial_dir: str | Path, out: str | Path, *, n_boot: int = N_BOOT) -> Path:
    """Write the self-contained export folder of one finished trial (see module docstring)."""
    import numpy as np
    from safetensors.torch import save_file

    from lrvd.adapter_io import read_meta

    trial_dir, out = Path(trial_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out} exists and is not empty; choose a new folder")
    shutil.copytree(trial_dir / "adapter", out, dirs_exist_ok=True)
    meta = read_meta(out)
    folders = meta.get("peft_folders", [""])
    heads = {}
    for folder in folders:
        tensors = head_tensors_from_peft(out / folder if folder else out)
        heads.update({(f"{folder}/" if folder else "") + k: v for k, v in tensors.items()})
    if heads:
        save_file({k: v.contiguous() for k, v in heads.items()}, str(out / "task_head.safetensors"))
    shutil.copy(trial_dir / "spec.json", out / "trial_spec.json")
    shutil.copy(trial_dir / "result.json", out / "result.json")
    spec = json.loads((trial_dir / "spec.json").read_text())
    result = json.loads((trial_dir / "result.json").read_text())
    intervals = None
    if (trial_dir / "predictions.npz").is_file():
        with np.load(trial_dir / "predictions.npz") as pred:
            intervals = bootstrap_intervals(pred["probs"], pred["labels"], n_boot=n_boot, seed=int(spec["seed"]))
    (out / "README.md").write_text(model_card(spec, result, meta, intervals, folders, sorted(heads)))
    return out


def model_card(
    spec: dict[str, Any],
    result: dict[str, Any],
    meta: dict[str, Any],
    intervals: dict[str, tuple[float, float, float]] | None,
    folders: list[str],
    heads: list[str],
) -> str:
    """The README model card (Markdown with the hub's YAML front matter)."""
    from lrvd_bench.provenance import suite_commit, suite_version

    # the result row names the model without machine paths (hub id, alias or ``local:<folder>``)
    method, model, task = spec["method"], result.get("model") or spec["model"], spec["task"]
    versions = result.get("versions", {}) or {}
    evaluation = meta.get("evaluation", {})
    member = folders[0] if folders and folders[0] else ""
    hf_class = meta.get("base_model_class") or "AutoModel"
    load_path = f'"EXPORT_DIR/{member}", adapter_name="{member}"' if member else '"EXPORT_DIR"'
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {model}",
        "tags: [lrvd, bayesian-lora, " + method + "]",
        "---",
        "",
        f"# {method} adapter for {task} on {model}",
        "",
        f"Trained and evaluated by the Bayesian low-rank adapter comparison suite (`bench run`), exported with "
        f"`bench export`. Method: **{method}**"
        + (f" ({meta.get('description')})" if meta.get("description") else "")
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{method}` |",
        f"| base model | `{model}` |",
        f"| task | `{task}` |",
        f"| seed | {spec['seed']} |",
        f"| trial | `{result.get('trial_id', '')}` (config hash `{result.get('config_hash', '')}`) |",
        f"| evaluation | {result.get('n_eval', '?')} examples, n_samples = {evaluation.get('n_samples')}, "
        f"prediction seed {evaluation.get('seed')} |",
        f"| suite | lrvd-bench {versions.get('lrvd-bench') or suite_version()}, commit "
        f"`{result.get('suite_commit') or 'not recorded'}` (export: {suite_version()}, `{suite_commit()}`) |",
        "| libraries | " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + " |",
        "",
        "## Metrics",
        "",
    ]
    if intervals:
        lines += [
            "95 % percentile-bootstrap intervals over the evaluation examples "
            f"({N_BOOT} resamples; the spread of one seed's predictions, not across seeds).",
            "",
            "| metric | value | 95 % interval |",
            "|---|---|---|",
        ]
        lines += [f"| {m} | {v:.4f} | [{lo:.4f}, {hi:.4f}] |" for m, (v, lo, hi) in intervals.items()]
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {m} | {result[m]:.4f} |" for m in METRICS if isinstance(result.get(m), (int, float))]
    lines += [
        "",
        f"Effective rank {result.get('effective_rank')}; trainable parameters "
        f"{result.get('trainable_params')}; variational parameters {result.get('variational_params')}.",
        "",
    ]
    lines += [
        "## Load it",
        "",
        "With plain transformers + peft (the posterior-mean / maximum-likelihood model; the task head is "
        "restored from `modules_to_save`):",
        "",
        "```python",
        f"from transformers import {hf_class}",
        "from peft import PeftModel",
        "",
        f'base = {hf_class}.from_pretrained("{model}")  # the pretrained model the trial started from',
        f"model = PeftModel.from_pretrained(base, {load_path}).eval()",
        "```",
        "",
        "With the suite, the full method (posterior included; `lrvd_bench.reload.rebuild` does this from a "
        "trial folder):",
        "",
        "```python",
        "from lrvd import get_method, AdapterConfig, TrainPlan, TrainConfig",
        f'method = get_method("{method}")(**{json.dumps(spec.get("method_params", {}))})',
        f"model = method.attach(classifier, AdapterConfig(**{json.dumps(spec['adapter'])}), plan)",
        'method.load_adapter(model, "EXPORT_DIR")',
        f"probs = method.predict_proba(model, batch, n_samples={evaluation.get('n_samples')})",
        "```",
        "",
        "## Files",
        "",
        "- `adapter_config.json`, `adapter_model.safetensors`: the peft adapter"
        + (f" (named adapters in {', '.join(f'`{f}/`' for f in folders)})" if member else ""),
        f"- `task_head.safetensors`: the trained task head alone ({', '.join(f'`{h}`' for h in heads) or 'none'})",
        "- `lrvd_adapter.json`: method, hyper-parameters, adapter spec, method state, evaluation settings",
        "- `lrvd_posterior.safetensors`: what peft has no place for (the posterior), when the method has one",
        "- `trial_spec.json`, `result.json`: the trial's exact configuration and result row",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(
            {
                k: spec[k]
                for k in ("adapter", "train", "method_params", "max_length", "limit_train", "limit_eval", "n_samples")
                if k in spec
            },
            indent=2,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)
