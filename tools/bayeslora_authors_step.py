"""BayesLoRA ``llm-scripts`` against the authors' LLM-script training step on the quickstart setting.

    uv run python tools/bayeslora_authors_step.py [--config configs/quickstart.yaml] [--seed 0]

The quickstart's BayesLoRA trial (MiniLM-L6, ARC-Easy, r = 8 on query/value, 100 steps of batch 4,
prune checks at steps 50 and 100) trained twice from the same adapters and head, on the same 100
batches, with the same noise seed: once by the authors' layer and loop as re-derived in
``tests/core/test_bayeslora_authors_step.py`` (``bayeslora/hf.py`` and ``bayeslora_llama.py``
``train_one``; the shared loop's warm-up rate, the one deviation every method has), once by the
suite's ``bayeslora`` with the given settings. Then the suite with one ``llm-scripts`` value at a time
set back to the ``glue-bench`` choice, to isolate each one's effect. Prints one JSON line per run:
the ranks left after each prune event, the final effective rank, and accuracy / NLL of the method's
MC predictive (``n_samples``, seeded) on the evaluation questions. Results: docs/methods.md, BayesLoRA.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "core")]

VARIANTS = {
    "suite llm-scripts": {},
    "KL not per example": {"kl_per_example": False},
    "log-variance lr x0.1": {"log_sigma2_lr_mult": 0.1},
    "moments sliced": {"after_prune": "keep-moments"},
    "previous suite": {"kl_per_example": False, "log_sigma2_lr_mult": 0.1, "after_prune": "keep-moments"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated suite runs, of: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--evaluate", action="store_true", help="also score each suite run on the evaluation split")
    parser.add_argument(
        "--no-dropout", action="store_true", help="set the backbone's dropout to 0 in both runs (isolates its draws)"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from test_bayeslora_authors_step import authors_train, authors_wrap

    from lrvd.inject import lrvd_modules
    from lrvd.metrics import classification_metrics
    from lrvd.registry import get_method
    from lrvd.training import fit, predict, seed_everything
    from lrvd_bench.config import load_config
    from lrvd_bench.trial_inputs import trial_inputs

    spec = next(s for s in load_config(args.config).expand() if s.method == "bayeslora" and s.seed == args.seed)
    train_cfg = spec.build_train()
    inputs = trial_inputs(spec)
    backbone, data, plan, adapter = inputs.backbone, inputs.data, inputs.plan, inputs.adapter
    batches = list(itertools.islice(itertools.cycle(data.train_loader), plan.total_steps))
    params = dict(spec.method_params)

    def evaluate(method, model) -> dict[str, float]:
        probs, labels = predict(method, model, data.eval_loader, device="cpu", progress=False, seed=spec.seed)
        metrics = classification_metrics(probs, labels)
        return {"accuracy": round(metrics["accuracy"], 3), "nll": round(metrics["nll"], 4)}

    seed_everything(spec.seed)
    start = get_method("bayeslora")(**params).attach(copy.deepcopy(backbone.model), adapter, plan)
    if args.no_dropout:
        for module in start.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    init = {
        n: (m.A_mu.detach(), m.B_mu.detach(), m.rank_log_sigma2.detach())
        for n, m in lrvd_modules(start.backbone).items()
    }

    # the authors' step
    reference = copy.deepcopy(start)
    for name, module in lrvd_modules(reference.backbone).items():  # back to plain linears with the same start
        parent_name, attr = name.rsplit(".", 1)
        setattr(reference.backbone.get_submodule(parent_name), attr, module.base_layer)
    for p in reference.parameters():
        p.requires_grad_(False)
    for p in reference.head_parameters():
        p.requires_grad_(True)
    layers = authors_wrap(reference, reference.backbone, init, adapter.scaling)
    method = get_method("bayeslora")(**params)
    reference.train()
    torch.manual_seed(1234)
    ref_log_alphas: dict[int, dict[str, torch.Tensor]] = {}
    events = authors_train(
        reference,
        layers,
        batches,
        plan.total_steps,
        train_cfg.lr,
        method.params.kl_scale,
        method.params.prune_every,
        method.params.tau,
        int(round(train_cfg.warmup_ratio * plan.total_steps)),
        head_lr=train_cfg.head_lr,
        start=int(round((method.params.prune_start or 0.0) * plan.total_steps)),
        log_alphas=ref_log_alphas,
    )
    ranks = {s: sum(len(k) for k in e.values()) for s, e in events.items()}
    print(json.dumps({"run": "authors' step", "ranks": ranks}), flush=True)

    for label in args.variants.split(","):
        overrides = VARIANTS[label]
        method = get_method("bayeslora")(**params, **overrides)
        model = copy.deepcopy(start)
        method.spec, method.plan = adapter, plan
        seen: dict[int, int] = {}
        on_step_end = method.on_step_end

        gaps: dict[int, dict[str, float]] = {}

        def record(model, optimizer, step, _m=method, _hook=on_step_end, _seen=seen, _gaps=gaps):
            if _m.prune_due(step) and step in ref_log_alphas:  # before the prune: rank log α against the authors'
                ours = {n: la for n, la in _m.rank_statistics(model).items()}
                theirs = ref_log_alphas[step]
                if all(len(ours[n]) == len(theirs[n]) for n in theirs):
                    gap = torch.cat([(torch.tensor(ours[n]) - theirs[n]).abs() for n in theirs])
                    near = sum(int((theirs[n] - _m.params.tau).abs().lt(0.05).sum()) for n in theirs)
                    _gaps[step] = {
                        "max_abs_log_alpha_diff": round(float(gap.max()), 4),
                        "median_abs_log_alpha_diff": round(float(gap.median()), 4),
                        "ranks_within_0.05_of_tau": near,
                    }
            logs = _hook(model, optimizer, step)
            if "pruned_ranks" in logs:
                _seen[step] = sum(_m.module_ranks(model).values())
            return logs

        method.on_step_end = record
        torch.manual_seed(1234)
        fit(method, model, batches, plan, device="cpu", progress=False)
        scores = evaluate(method, model) if args.evaluate else {}
        print(json.dumps({"run": label, "ranks": seen, "vs_authors": gaps, **scores}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
