"""ARC-Challenge, ARC-Easy and OpenBookQA: science questions with 3-5 lettered choices.

Splits (the BLoB / Laplace-LoRA protocol): train -> ``train``, eval -> ``validation``
(ARC-C 1119 / 299, ARC-E 2251 / 570, OBQA 4957 / 500). The ``test`` split is bundled too and
loadable as ``load("test")``, but the bench does not evaluate on it.

Gold answers are letters (``A``-``E``) or, for some NYSEDREGENTS items, digits (``1``-``4``); the label
is the answer's position in the record's own label list, so both schemes map to 0-based indices.
A few ARC questions have 3 or 5 choices: ``n_classes`` is the largest count (5) and the loaders mask
the missing choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrvd.errors import LRVDError
from lrvd_bench.tasks.base import Example, Task

_SPLITS = {"train": "train", "eval": "validation", "test": "test"}


@dataclass(frozen=True)
class MultipleChoiceQA(Task):
    """Records in the HF ``ai2_arc`` / ``openbookqa`` schema: ``question`` (or ``question_stem``),
    ``choices {text, label}``, ``answerKey``."""

    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        question = record.get("question", record.get("question_stem"))
        texts, labels = list(record["choices"]["text"]), [str(x).strip() for x in record["choices"]["label"]]
        answer = str(record["answerKey"]).strip()
        if answer not in labels:
            raise LRVDError(f"task {self.name!r}: answer {answer!r} of {record.get('id', fallback_id)} not in {labels}")
        if len(texts) > self.n_classes:
            raise LRVDError(
                f"task {self.name!r}: {record.get('id', fallback_id)} has {len(texts)} > {self.n_classes} choices"
            )
        return Example(
            question=question, choices=texts, label=labels.index(answer), id=str(record.get("id", fallback_id))
        )


ARC_CHALLENGE = MultipleChoiceQA(
    name="arc-c",
    description="ARC-Challenge: grade-school science questions, 3-5 choices (train 1119 / eval = validation 299)",
    n_classes=5,
    kind="multiple_choice",
    hub_id="allenai/ai2_arc",
    hub_config="ARC-Challenge",
    folder="arc-challenge",
    splits=_SPLITS,
    paper_sizes=(1119, 299),
)

ARC_EASY = MultipleChoiceQA(
    name="arc-e",
    description="ARC-Easy: grade-school science questions, 3-5 choices (train 2251 / eval = validation 570)",
    n_classes=5,
    kind="multiple_choice",
    hub_id="allenai/ai2_arc",
    hub_config="ARC-Easy",
    folder="arc-easy",
    splits=_SPLITS,
    paper_sizes=(2251, 570),
)

OPENBOOKQA = MultipleChoiceQA(
    name="obqa",
    description="OpenBookQA (main): elementary science questions, 4 choices (train 4957 / eval = validation 500)",
    n_classes=4,
    kind="multiple_choice",
    hub_id="allenai/openbookqa",
    hub_config="main",
    folder="openbookqa",
    splits=_SPLITS,
    paper_sizes=(4957, 500),
)
