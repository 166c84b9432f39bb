"""GLUE CoLA: is an English sentence grammatically acceptable? (binary; primary metric MCC).

Splits (the GLUE dev protocol of AdaLoRA and BayesLoRA, AdaLoRA paper Table 1): train -> ``train``
(8551), eval -> ``validation`` (the GLUE dev set, 1043: 527 in-domain then 516 out-of-domain).
Label 1 = acceptable; about 69 % of the dev set is acceptable, so accuracy alone hides collapse to
the majority class — report Matthews correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrvd_bench.tasks.base import Example, Task


@dataclass(frozen=True)
class Cola(Task):
    """Records in the HF ``glue/cola`` schema: ``sentence``, ``label`` (0/1), ``idx``."""

    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        return Example(
            question=record["sentence"],
            choices=["unacceptable", "acceptable"],
            label=int(record["label"]),
            id=str(record.get("idx", fallback_id)),
        )

    def causal_prompt(self, example: Example) -> str:
        return (
            "Is the following sentence grammatically acceptable? Answer with only Yes or No: "
            f"{example.question} Answer:"
        )

    def option_words(self) -> list[str]:
        return ["No", "Yes"]


COLA = Cola(
    name="cola",
    description="GLUE CoLA: grammatical acceptability, binary, metric MCC (train 8551 / eval = dev 1043)",
    n_classes=2,
    kind="classification",
    hub_id="nyu-mll/glue",
    hub_config="cola",
    folder="cola",
    metric="mcc",
)
