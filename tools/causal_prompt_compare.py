"""Zero-shot answer-letter scoring on SmolLM2-135M: the suite's prompt and letter tokens against
bayesian-peft's causal-LM (``mcdataset``) ones, rebuilt from the rules listed in docs/methods.md.

    uv sync --all-packages --extra smollm
    uv run python tools/causal_prompt_compare.py [N]      # N ARC-Easy validation questions (default 100)

The N questions are the quickstart's (``limit_eval`` subsample, split seed 0). One prompt per forward
pass, no padding, no adapter. Prints, per variant, accuracy and NLL of the letter distribution and the
next-token probability mass on ``" A"``-``" E"`` and on ``"A"``-``"E"``. Results: docs/methods.md,
"Adapter targets and the causal-LM answer letters".
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from lrvd_bench.backbones import load_backbone
from lrvd_bench.tasks import get_task
from lrvd_bench.tasks.base import BUNDLED_DATA_DIR

#: bayesian-peft's zero-shot ARC preamble (docs/methods.md)
PREAMBLE = (
    "Return the label of the correct answer for the question below.\n\n"
    "Question: {question}\nChoices:\n{choices}\nAnswer:"
)


def main(n: int) -> None:
    torch.set_num_threads(1)
    task = get_task("arc-e")
    start = time.time()
    backbone = load_backbone("smollm2-135m", task)
    tokenizer, lm = backbone.tokenizer, backbone.model.backbone.eval()
    print("load", round(time.time() - start), "s", flush=True)
    rows = [json.loads(line) for line in open(BUNDLED_DATA_DIR / "arc-easy" / "validation.jsonl")]
    rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), n))]
    space = tokenizer.convert_tokens_to_ids([f"Ġ{c}" for c in "ABCDE"])  # byte-level BPE: " A" is "ĠA"
    nospace = [tokenizer(c, add_special_tokens=False)["input_ids"][-1] for c in "ABCDE"]  # last token of "A"
    assert space == [tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in "ABCDE"]

    def suite(record):
        example = task.convert(record, "x")
        return task.causal_prompt(example), example.label, len(example.choices)

    def theirs(record, swapped=True):
        texts, labels = record["choices"]["text"], record["choices"]["label"]
        pairs = zip(texts, labels, strict=True) if swapped else zip(labels, texts, strict=True)
        example = task.convert(record, "x")
        choices = "\n".join(f"{first}) {second}" for first, second in pairs)
        return PREAMBLE.format(question=record["question"], choices=choices), example.label, len(example.choices)

    variants = {
        "suite: prompt, ' A' tokens, masked": (suite, space, True),
        "suite prompt, 'A' tokens, 5 letters": (suite, nospace, False),
        "bayesian-peft as run: text) label lines, 'A' tokens, 5 letters": (theirs, nospace, False),
        "bayesian-peft, label) text lines, 'A' tokens, 5 letters": (lambda r: theirs(r, False), nospace, False),
        "bayesian-peft as run, ' A' tokens, masked": (theirs, space, True),
    }
    totals = {name: [0, 0.0, 0.0, 0.0] for name in variants}  # correct, NLL, mass ' A'-' E', mass 'A'-'E'
    cache: dict[str, torch.Tensor] = {}
    for i, record in enumerate(rows):
        for name, (fmt, ids, masked) in variants.items():
            prompt, label, k = fmt(record)
            if prompt not in cache:
                with torch.no_grad():
                    ids_in = tokenizer(prompt, return_tensors="pt")["input_ids"]
                    cache[prompt] = lm(input_ids=ids_in).logits[0, -1].float()
            logits = cache[prompt]
            scores = logits[ids].clone()
            if masked:
                scores[k:] = -1e4
            logp = scores.log_softmax(-1)
            every = logits.softmax(-1)
            totals[name][0] += int(int(logp.argmax()) == label)
            totals[name][1] += -float(logp[label])
            totals[name][2] += float(every[space].sum())
            totals[name][3] += float(every[nospace].sum())
        if i % 20 == 19:
            print(i + 1, round(time.time() - start), "s", flush=True)
    for name, (correct, nll, mass_space, mass_bare) in totals.items():
        print(
            f"{name}: accuracy {correct / n:.2f}  NLL {nll / n:.3f}  "
            f"mass ' A'-' E' {mass_space / n:.3f}  mass 'A'-'E' {mass_bare / n:.3f}"
        )
    print("tokens ' A'..' E'", space, "'A'..'E'", nospace)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
