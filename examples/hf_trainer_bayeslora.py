"""Fine-tune a Hugging Face model with BayesLoRA in the standard ``transformers.Trainer``.

Runs offline on a CPU in well under a minute: a tiny BERT built from a config (random weights, no
download) learns a toy task — is token 5 anywhere in the sequence? — with LRVD adapters on the
attention's query and value projections and a trainable classifier head. Then the posterior
predictive (mean of softmax over posterior samples) is evaluated, and the ranks pruning removed
are printed.

    uv run python examples/hf_trainer_bayeslora.py --max-steps 100

The same three calls work on any pretrained model (``AutoModelForSequenceClassification.from_pretrained``):
``lrvd.get_bayeslora_model``, ``lrvd.BayesLoraTrainer`` and ``lrvd.predict_proba``.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

import lrvd


class ToyTokens(Dataset):
    """Random token sequences; label 1 iff token 5 occurs (planted in half of them)."""

    def __init__(self, n: int, seq_len: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, 64, (n, seq_len), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        where = torch.randint(1, seq_len, (n,), generator=g)
        self.ids[self.labels == 1, where[self.labels == 1]] = 5
        self.ids[:, 0] = 1  # [CLS]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--tau", type=float, default=3.0, help="prune ranks with log alpha >= tau")
    parser.add_argument("--prune-every", type=int, default=40)
    parser.add_argument("--kl-scale", type=float, default=1e-6, help="KL weight (the bayeslora method's default)")
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = tiny_bert(args.seed)
    config = lrvd.BayesLoraConfig(
        target_modules=["query", "value"],
        r=8,
        lora_alpha=16,
        modules_to_save=["classifier"],
        kl_scale=args.kl_scale,
        tau=args.tau,
        prune_every=args.prune_every,
        prune_start=args.prune_every,
        n_samples=args.n_samples,
    )
    model = lrvd.get_bayeslora_model(model, config)
    trainable, total = lrvd.hf.trainable_summary(model)
    print(f"trainable params: {trainable:,} of {total:,}")

    train, test = ToyTokens(512, seed=args.seed), ToyTokens(256, seed=args.seed + 1)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            max_steps=args.max_steps,
            per_device_train_batch_size=16,
            learning_rate=args.lr,
            warmup_steps=max(1, args.max_steps // 10),
            logging_steps=max(1, args.max_steps // 5),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = lrvd.BayesLoraTrainer(model=model, args=training_args, train_dataset=train)
        trainer.train()

    batch = {"input_ids": test.ids, "attention_mask": torch.ones_like(test.ids)}
    probs = lrvd.predict_proba(model, batch, n_samples=args.n_samples, seed=args.seed)
    mean_probs = lrvd.predict_proba(model, batch, n_samples=0)
    summary = {
        "trainable_params": trainable,
        "total_params": total,
        "accuracy": float((probs.argmax(-1) == test.labels).float().mean()),
        "accuracy_posterior_mean": float((mean_probs.argmax(-1) == test.labels).float().mean()),
        "nll": float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), test.labels)),
        "effective_rank": sum(lrvd.hf.rank_report(model).values()),
        "initial_rank": config.r * len(lrvd.lrvd_modules(model)),
        "log": [
            {k: v for k, v in record.items() if k in ("step", "loss", "kl", "effective_rank", "pruned_ranks")}
            for record in trainer.state.log_history
            if "loss" in record
        ],
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
