"""WinoGrande (v1.1) WG-S and WG-M: fill the blank ``_`` with one of two names or objects.

Splits (the BLoB / Laplace-LoRA protocol): train -> ``winogrande_s`` (640) or ``winogrande_m`` (2558) ``train`` from the
hub; eval -> the shared dev set (``validation``, 1267). Only the dev set is bundled, so offline the
dev set is carved (see :mod:`lrvd_bench.tasks.base`): 760 / 507 with seed 0, WG-S keeping the first
640 of the 760 training items (WG-S ⊂ WG-M, as the real training sizes are nested).

Encoders score each option as the sentence up to the blank with the option filled in, paired with
the rest of the sentence (the usual RoBERTa/WinoGrande formulation); causal LMs get the BLoB prompt
with the sentence as the question and the two options as choices A and B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrvd_bench.tasks.base import Carve, Example, Task


@dataclass(frozen=True)
class WinoGrande(Task):
    """Records in the HF ``winogrande`` schema: ``sentence``, ``option1``, ``option2``, ``answer`` ("1"|"2")."""

    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        return Example(
            question=record["sentence"],
            choices=[record["option1"], record["option2"]],
            label=int(record["answer"]) - 1,
            id=str(record.get("id", fallback_id)),
        )

    def encoder_inputs(self, example: Example) -> list[tuple[str, str | None]]:
        sentence = example.question
        if "_" not in sentence:
            return super().encoder_inputs(example)
        cut = sentence.index("_")
        rest = sentence[cut + 1 :].strip()
        return [(sentence[:cut] + option, rest) for option in example.choices]


WINOGRANDE_S = WinoGrande(
    name="wg-s",
    description="WinoGrande-S: pronoun-style blank filling, 2 options (train 640 from hub / eval = dev 1267)",
    n_classes=2,
    kind="multiple_choice",
    hub_id="allenai/winogrande",
    hub_config="winogrande_s",
    folder="winogrande",
    carve=Carve(train_fraction=0.6, max_train=640),
    paper_sizes=(640, 1267),
)

WINOGRANDE_M = WinoGrande(
    name="wg-m",
    description="WinoGrande-M: pronoun-style blank filling, 2 options (train 2558 from hub / eval = dev 1267)",
    n_classes=2,
    kind="multiple_choice",
    hub_id="allenai/winogrande",
    hub_config="winogrande_m",
    folder="winogrande",
    carve=Carve(train_fraction=0.6),
    paper_sizes=(2558, 1267),
)
