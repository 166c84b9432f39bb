"""BoolQ: a yes/no question about a Wikipedia passage (binary classification, label 1 = True).

Splits (the BLoB / Laplace-LoRA protocol): train -> ``train`` (9427, hub only) and eval -> ``validation``
(3270). Only the dev set is bundled, so offline it is carved 60 / 40 with seed 0 (1962 train / 1308 eval).

Encoders classify the pair (question, passage); causal LMs get the protocol prompt
"Answer the question with only True or False: {q} Context: {p}." followed by " Answer:" and are
scored on the next-token logits of "False" and "True".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrvd_bench.tasks.base import Carve, Example, Task

CLASS_NAMES = ["False", "True"]


def _truth(value: Any) -> int:
    if isinstance(value, str):
        return int(value.strip().lower() in {"true", "1", "yes"})
    return int(bool(value))


@dataclass(frozen=True)
class BoolQ(Task):
    """Records in the HF ``boolq`` schema (``question``, ``passage``, ``answer``: bool) or the
    SuperGLUE one (``label``: 0/1 or "true"/"false")."""

    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        answer = record["answer"] if "answer" in record else record["label"]
        return Example(
            question=record["question"],
            choices=list(CLASS_NAMES),
            label=_truth(answer),
            context=record["passage"],
            id=str(record.get("idx", fallback_id)),
        )

    def causal_prompt(self, example: Example) -> str:
        return f"Answer the question with only True or False: {example.question} Context: {example.context}. Answer:"

    def option_words(self) -> list[str]:
        return list(CLASS_NAMES)


BOOLQ = BoolQ(
    name="boolq",
    description="BoolQ: yes/no questions about a passage (train 9427 from hub / eval = validation 3270)",
    n_classes=2,
    kind="classification",
    hub_id="google/boolq",
    hub_config=None,
    folder="boolq",
    carve=Carve(train_fraction=0.6),
    paper_sizes=(9427, 3270),
)
