"""``bench export RUN_DIR --method M [--seed S] --out DIR``: one trial's adapter as a self-contained folder.

The folder is what a model hub expects of a peft adapter, plus what the suite needs to reload the
full method::

    adapter_config.json, adapter_model.safetensors   the peft adapter (PeftModel.from_pretrained(base, DIR));
                                                     the trained task head inside as modules_to_save
    <member>/…                                       the ensemble: one named peft adapter per member
    task_head.safetensors                            the task head alone, by its transformers parameter names
    lrvd_adapter.json, lrvd_posterior.safetensors    the sidecar (method, config, posterior; lrvd.adapter_io)
    trial_spec.json, result.json                     the trial's exact spec and result row
    README.md                                        model card (huggingface_hub.ModelCard): method, base model,
                                                     task, metrics with 95 % bootstrap intervals, the input
                                                     format, load snippets, config, suite version and commit

The folder is portable: every ``adapter_config.json`` names the base model by its Hugging Face Hub id
(``sentence-transformers/all-MiniLM-L6-v2`` for ``minilm``; :data:`lrvd_bench.backbones.MODEL_SOURCES`),
never the training machine's path, and the sidecar records the package an alias was loaded from.
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

    from lrvd_bench.backbones import model_source

    trial_dir, out = Path(trial_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out} exists and is not empty; choose a new folder")
    shutil.copytree(trial_dir / "adapter", out, dirs_exist_ok=True)
    spec = json.loads((trial_dir / "spec.json").read_text())
    result = json.loads((trial_dir / "result.json").read_text())
    source = model_source(spec["model"])
    meta = portable_meta(out, source)
    folders = meta.get("peft_folders", [""])
    heads = {}
    for folder in folders:
        tensors = head_tensors_from_peft(out / folder if folder else out)
        heads.update({(f"{folder}/" if folder else "") + k: v for k, v in tensors.items()})
    if heads:
        save_file({k: v.contiguous() for k, v in heads.items()}, str(out / "task_head.safetensors"))
    shutil.copy(trial_dir / "spec.json", out / "trial_spec.json")
    shutil.copy(trial_dir / "result.json", out / "result.json")
    intervals = None
    if (trial_dir / "predictions.npz").is_file():
        with np.load(trial_dir / "predictions.npz") as pred:
            intervals = bootstrap_intervals(pred["probs"], pred["labels"], n_boot=n_boot, seed=int(spec["seed"]))
    model_card(spec, result, meta, intervals, folders, sorted(heads), source).save(str(out / "README.md"))
    return out


def portable_meta(folder: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Name the base model by its Hub id, not the training machine's path, in every peft
    ``adapter_config.json`` (through peft's own config class) and in the sidecar, which also records
    the package an alias came from. Returns the sidecar."""
    from peft import PeftConfig

    from lrvd.adapter_io import SIDECAR, read_meta

    meta = read_meta(folder)
    hub_id = source.get("hub_id")
    for sub in meta.get("peft_folders", [""]):
        target = folder / sub if sub else folder
        config = PeftConfig.from_pretrained(str(target))
        config.base_model_name_or_path = hub_id or source.get("local")
        config.save_pretrained(str(target))
    meta["base_model"] = hub_id or source.get("local")
    meta["base_model_source"] = source
    (folder / SIDECAR).write_text(json.dumps(meta, indent=2))
    return meta


def demo_example(spec: dict[str, Any]) -> Any:
    """(task, the first question the trial evaluated): what the card's input snippet scores."""
    from lrvd.errors import LRVDError
    from lrvd_bench.loaders import subsample
    from lrvd_bench.tasks import get_task
    from lrvd_bench.tasks.base import Example

    task = get_task(spec["task"])
    split_seed = int(spec.get("split_seed") or 0)
    try:
        examples = subsample(task.load("eval", spec.get("data_dir"), split_seed), spec.get("limit_eval"), split_seed)
    except (LRVDError, OSError):
        examples = []
    example = examples[0] if examples else Example("Which of these is a mammal?", ["trout", "whale", "frog"], 1)
    return task, example


def input_snippet(spec: dict[str, Any], meta: dict[str, Any], source: dict[str, Any]) -> tuple[str, str]:
    """(prose, Python) for plain transformers + peft: load the base model by its Hub id, the adapter
    from this folder, and score one question built exactly as the suite's loaders build it."""
    task, example = demo_example(spec)
    max_length = int(spec.get("max_length") or 64)
    hf_class = meta.get("base_model_class") or "AutoModel"
    gguf = source.get("gguf_file")
    gguf_arg = f", gguf_file={gguf!r}" if gguf else ""
    head = [
        "import torch",
        "from peft import PeftConfig, PeftModel",
        "from transformers import {auto}, AutoTokenizer",
        "",
        'adapter = "."  # this folder, or its Hub id once uploaded',
        f"base_id = PeftConfig.from_pretrained(adapter).base_model_name_or_path  # {meta.get('base_model')!r}",
        f"tokenizer = AutoTokenizer.from_pretrained(base_id{gguf_arg})",
        f"base = {{auto}}.from_pretrained(base_id{gguf_arg})",
        "model = PeftModel.from_pretrained(base, adapter).eval()",
        "",
    ]
    if hf_class.endswith("ForMultipleChoice"):
        pairs = task.encoder_inputs(example)
        auto = "AutoModelForMultipleChoice"
        prose = (
            f"Inputs: each question is scored as one text pair per choice, `(question, choice)` "
            f'(the task\'s own pairing), tokenised together with `truncation="longest_first"` and '
            f"`max_length={max_length}`, padded to the longest pair: `input_ids [batch, n_choices, length]`; "
            f"the logits are `[batch, n_choices]`. A question with fewer choices than the task's "
            f"{task.n_classes} is scored on its own choices: in a batch the suite pads the choice axis by "
            "repeating choice 0, sets those padded logits to -1e4 (probability 0) and pads the columns to "
            f"{task.n_classes}, which is the shape of the saved predictions."
        )
        body = [
            "pairs = [  # (first text, second text) per choice, as the task pairs them",
            *(f"    {(a, b or '')!r}," for a, b in pairs),
            "]",
            "enc = tokenizer(",
            "    [a for a, _ in pairs], [b for _, b in pairs],",
            f'    truncation="longest_first", max_length={max_length}, padding=True, return_tensors="pt",',
            ")",
            "with torch.no_grad():",
            "    logits = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits  # [1, n_choices]",
            "print(logits.softmax(-1)[0].tolist())",
        ]
    elif hf_class.endswith("ForSequenceClassification"):
        [(first, second)] = task.encoder_inputs(example)
        auto = "AutoModelForSequenceClassification"
        prose = (
            f'Inputs: one text (or text pair), `truncation="longest_first"`, `max_length={max_length}`; '
            f"logits `[batch, {task.n_classes}]`."
        )
        body = [
            f'enc = tokenizer({first!r}, {second!r}, truncation="longest_first", max_length={max_length}, '
            'return_tensors="pt")',
            "with torch.no_grad():",
            f"    logits = model(**enc).logits  # [1, {task.n_classes}]",
            "print(logits.softmax(-1)[0].tolist())",
        ]
    else:
        auto = "AutoModelForCausalLM"
        words = task.option_words()
        prose = (
            "Inputs: the prompt below (the BLoB / Laplace-LoRA protocol), right-padded, at most "
            f"{max_length} tokens (a longer one loses its passage, then its start); the class scores are the "
            "next-token logits after the prompt at the first token of each option "
            f"({', '.join(repr(' ' + w) for w in words)}); options a question lacks get -1e4."
        )
        body = [
            f"prompt = {task.causal_prompt(example)!r}",
            f'options = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in {words!r}]',
            f'enc = tokenizer(prompt, return_tensors="pt", truncation=True, max_length={max_length})',
            "with torch.no_grad():",
            "    logits = model(**enc).logits[0, -1, options]",
            f"print(logits[: {len(example.choices)}].softmax(-1).tolist())",
        ]
    code = "\n".join(head + body).replace("{auto}", auto)
    return prose, code


def model_card(
    spec: dict[str, Any],
    result: dict[str, Any],
    meta: dict[str, Any],
    intervals: dict[str, tuple[float, float, float]] | None,
    folders: list[str],
    heads: list[str],
    source: dict[str, Any] | None = None,
) -> Any:
    """The README model card: ``huggingface_hub.ModelCard`` with ``ModelCardData`` front matter
    (license, datasets, base_model, metrics and eval results) and a Markdown body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from lrvd_bench.backbones import MODEL_SOURCES
    from lrvd_bench.provenance import suite_commit, suite_version
    from lrvd_bench.tasks import get_task

    source = source or {}
    method, task = spec["method"], spec["task"]
    model = source.get("hub_id") or source.get("local") or result.get("model") or spec["model"]
    alias = source.get("alias")
    task_info = get_task(task)
    versions = result.get("versions", {}) or {}
    evaluation = meta.get("evaluation", {})
    name = f"{method} adapter for {task} on {model}"
    values = {m: (intervals[m][0] if intervals else result.get(m)) for m in METRICS}
    data = ModelCardData(
        model_name=name,
        library_name="peft",
        base_model=source.get("hub_id"),
        license=MODEL_SOURCES[alias].license if alias in MODEL_SOURCES else None,
        datasets=[task_info.hub_id],
        metrics=list(METRICS),
        tags=["lrvd", "bayesian-lora", method],
        eval_results=[
            EvalResult(
                task_type="multiple-choice" if task_info.kind == "multiple_choice" else "text-classification",
                dataset_type=task_info.hub_id,
                dataset_name=task,
                dataset_config=task_info.hub_config,
                metric_type=m,
                metric_value=round(float(v), 4),
            )
            for m, v in values.items()
            if isinstance(v, (int, float))
        ]
        or None,
    )
    origin = (
        f"`{model}`"
        + (f" (alias `{alias}`, bundled offline by the `{source.get('package')}` package)" if alias else "")
        if model
        else "unknown"
    )
    lines = [
        f"# {name}",
        "",
        f"Trained and evaluated by the Bayesian low-rank adapter comparison suite (`bench run`), exported with "
        f"`bench export`. Method: **{method}**"
        + (f" ({meta.get('description')})" if meta.get("description") else "")
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{method}` |",
        f"| base model | {origin}" + (f", file `{source['gguf_file']}`" if source.get("gguf_file") else "") + " |",
        f"| task | `{task}` ({task_info.hub_id}) |",
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
    member = folders[0] if folders and folders[0] else ""
    prose, code = input_snippet(spec, meta, source)
    if member:  # an ensemble: the snippet loads its first member
        code = code.replace(
            "PeftConfig.from_pretrained(adapter)", f'PeftConfig.from_pretrained(adapter, subfolder="{member}")'
        )
        code = code.replace(
            "PeftModel.from_pretrained(base, adapter)",
            f'PeftModel.from_pretrained(base, adapter, subfolder="{member}")',
        )
    lines += [
        "## Load it",
        "",
        "With plain transformers + peft: the posterior-mean / maximum-likelihood model, the base model "
        "fetched by its Hub id (offline: from the Hugging Face cache, `HF_HUB_OFFLINE=1`), the task head "
        "restored from `modules_to_save`"
        + (f"; the ensemble's member `{member}` (each member is a named adapter folder)" if member else "")
        + ". Run it from this folder.",
        "",
        prose,
        "",
        "```python",
        code,
        "```",
        "",
        "With the suite installed: the full method, posterior included, rebuilt from `trial_spec.json` "
        "(backbone, task and the trial's rows) and predicting as the trial did:",
        "",
        "```python",
        "from lrvd_bench.reload import load_export",
        "",
        'method, model, data = load_export(".")  # this folder',
        "batch = next(iter(data.eval_loader))",
        f"probs = method.predict_proba(model, batch, n_samples={evaluation.get('n_samples')})  # [batch, n_classes]",
        "print(probs[0].tolist())",
        "```",
        "",
        "## Files",
        "",
        "- `adapter_config.json`, `adapter_model.safetensors`: the peft adapter"
        + (f" (named adapters in {', '.join(f'`{f}/`' for f in folders)})" if member else ""),
        f"- `task_head.safetensors`: the trained task head alone ({', '.join(f'`{h}`' for h in heads) or 'none'})",
        "- `lrvd_adapter.json`: method, hyper-parameters, adapter spec, method state, evaluation settings, "
        "and the base model's Hub id and the package it came from",
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
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
