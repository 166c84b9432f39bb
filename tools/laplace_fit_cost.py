"""Laplace-LoRA fit cost: every KFAC curvature option against the exact one on the quickstart data.

    uv run python tools/laplace_fit_cost.py [--options ggn:64,ggn-mc:0,...] [--config configs/quickstart.yaml]

Trains the quickstart's Laplace-LoRA trial (seed 0: LoRA MAP, 1 thread) once, then for each
``curvature:fit_examples`` option fits the Laplace posterior at the same weights, tunes the prior
(marglik, the method's defaults) and evaluates the GLM probit predictive on the evaluation questions.
Prints one JSON line per option: fit and prior-tuning CPU seconds, the same in training epochs (CPU
seconds of a median forward+backward training step × steps per epoch), the tuned prior precision, the log
marginal likelihood, and GLM accuracy / NLL. CPU seconds (``time.process_time``), not wall time, so a
shared machine changes the numbers little. Results: docs/performance.md, "Laplace-LoRA fit cost".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument(
        "--options",
        default="ggn:0,ggn:64,ggn-mc:0,ggn-mc:64,ef:0",
        help="comma-separated curvature:fit_examples (0: the whole training set)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from lrvd.metrics import classification_metrics
    from lrvd.registry import get_method
    from lrvd.training import fit, predict, seed_everything
    from lrvd_baselines.laplace_lora import fit_on_subset, head_frozen
    from lrvd_bench.config import load_config
    from lrvd_bench.trial_inputs import trial_inputs

    spec = next(s for s in load_config(args.config).expand() if s.method == "laplace-lora" and s.seed == args.seed)
    inputs = trial_inputs(spec)
    data, plan = inputs.data, inputs.plan
    method = get_method("laplace-lora")()
    seed_everything(spec.seed)
    model = method.attach(inputs.backbone.model, inputs.adapter, plan)
    fit(method, model, data.train_loader, plan, device="cpu", progress=False)

    # CPU seconds of one training step (forward + loss + backward), median of 10 after 2 warm-up steps
    times, batches = [], itertools.cycle(data.train_loader)
    for _ in range(12):
        batch = next(batches)
        start = time.process_time()
        torch.nn.functional.cross_entropy(model(batch), batch["labels"]).backward()
        times.append(time.process_time() - start)
    model.zero_grad(set_to_none=True)
    epoch_cpu_s = sorted(times[2:])[5] * len(data.train_loader)
    model.eval()

    for option in args.options.split(","):
        curvature, n_fit = option.split(":")
        method = get_method("laplace-lora")(curvature=curvature, fit_examples=int(n_fit))
        la = method.build_laplace(model)
        with head_frozen(model):
            start = time.process_time()
            fit_on_subset(la, data.train_loader, int(n_fit), seed=spec.seed)
            fit_s = time.process_time() - start
            start = time.process_time()
            method.tune_prior(la)
            tune_s = time.process_time() - start
        method.laplace = la
        probs, labels = predict(method, model, data.eval_loader, device="cpu", progress=False)
        metrics = classification_metrics(probs, labels)
        print(
            json.dumps(
                {
                    "curvature": curvature,
                    "fit_examples": int(n_fit) or data.n_train,
                    "fit_cpu_s": round(fit_s, 1),
                    "tune_cpu_s": round(tune_s, 2),
                    "epochs": round((fit_s + tune_s) / epoch_cpu_s, 2),
                    "prior_precision": round(float(la.prior_precision), 3),
                    "log_marglik": round(float(la.log_marginal_likelihood()), 1),
                    "glm_accuracy": metrics["accuracy"],
                    "glm_nll": round(metrics["nll"], 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
