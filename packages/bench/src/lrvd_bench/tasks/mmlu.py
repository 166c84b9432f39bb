"""MMLU college chemistry and college physics: 4-choice exam questions, evaluation only.

They are the large-shift out-of-distribution sets of BLoB's protocol: an adapter trained on
OpenBookQA is evaluated, without further training, on ARC-C / ARC-E (small shift) and on
MMLU-chem / MMLU-phy (large shift). Neither has a training split here (``splits={"eval": "test"}``,
so :attr:`Task.eval_only` holds and ``load("train")`` is a one-line error).

Split: eval -> ``test`` (100 / 102 questions), as BLoB evaluates MMLU: Wang-ML-Lab/bayesian-peft
``dataset/utils/dsets.py`` ``MMLUDataset`` keeps the ``test`` split of ``cais/mmlu`` filtered to the
subject (``MMLUSplit["chem"] == ["college_chemistry"]``, ``"phy"`` -> ``["college_physics"]``), and
``dataset/S2SDataset_Classification.py`` loads it with ``split="test"``.

Causal LMs get BLoB's zero-shot MMLU prompt (``MMLUDataset.zero_shot_preamble`` filled by
``_format_prompts`` in the same file): an instruction line, a blank line, ``Question: ...``, the
choices one per line as ``A) ...`` to ``D) ...``, then ``Answer:``; they are scored on the next-token
logits of A-D like the other lettered tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrvd.errors import LRVDError
from lrvd_bench.tasks.base import LETTERS, Example, Task

N_CHOICES = 4


@dataclass(frozen=True)
class MMLU(Task):
    """Records in the HF ``cais/mmlu`` schema: ``question``, ``subject``, ``choices`` (4 strings),
    ``answer`` (index of the correct choice, 0-3)."""

    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        choices, answer = list(record["choices"]), int(record["answer"])
        where = f"{self.hub_config}-{fallback_id}"
        if len(choices) != N_CHOICES or not 0 <= answer < N_CHOICES:
            raise LRVDError(
                f"task {self.name!r}: {where} has {len(choices)} choices and answer {answer}; "
                f"expected {N_CHOICES} choices and an answer in 0-{N_CHOICES - 1}"
            )
        return Example(question=record["question"], choices=choices, label=answer, id=where)

    def causal_prompt(self, example: Example) -> str:
        """BLoB's zero-shot MMLU prompt (the protocol text; see the module docstring for its source)."""
        choices = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(example.choices))
        return (
            "Return the label of the correct answer for the question below.\n\n"
            f"Question: {example.question}\nChoices:\n{choices}\nAnswer:"
        )


MMLU_CHEM = MMLU(
    name="mmlu-chem",
    description="MMLU college chemistry: 4-choice exam questions, out-of-distribution eval (eval = test 100)",
    n_classes=N_CHOICES,
    kind="multiple_choice",
    hub_id="cais/mmlu",
    hub_config="college_chemistry",
    folder="mmlu/college_chemistry",
    splits={"eval": "test"},
)

MMLU_PHY = MMLU(
    name="mmlu-phy",
    description="MMLU college physics: 4-choice exam questions, out-of-distribution eval (eval = test 102)",
    n_classes=N_CHOICES,
    kind="multiple_choice",
    hub_id="cais/mmlu",
    hub_config="college_physics",
    folder="mmlu/college_physics",
    splits={"eval": "test"},
)
