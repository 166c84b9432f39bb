"""Shared helpers of ``bench analyze``: trial discovery, module-name parsing, CSV/figure writing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SkipAnalysis(Exception):
    """An analysis whose inputs are absent: ``analyze_run`` prints the message and goes on."""


@dataclass
class Trial:
    """One trial folder: identity from result.json (or spec.json for an unfinished trial)."""

    path: Path
    method: str
    task: str
    seed: int
    ok: bool
    result: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method}/{self.task}/s{self.seed}"


def load_trials(run_dir: str | Path) -> list[Trial]:
    trials = []
    root = Path(run_dir) / "trials"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        info: dict[str, Any] = {}
        for name in ("result.json", "spec.json"):
            try:
                info = json.loads((folder / name).read_text())
                break
            except (OSError, ValueError):
                continue
        if not info.get("method"):
            continue
        trials.append(
            Trial(
                folder,
                str(info["method"]),
                str(info.get("task", "")),
                int(info.get("seed", 0) or 0),
                info.get("status") == "ok",
                info if (folder / "result.json").exists() else {},
            )
        )
    return trials


_TYPES = (  # (type, patterns) checked in order on the lower-cased module name's last components
    ("q", ("query", "q_proj", "q_lin", ".q")),
    ("k", ("key", "k_proj", "k_lin", ".k")),
    ("v", ("value", "v_proj", "v_lin", ".v")),
    ("o", ("attention.output.dense", "o_proj", "out_proj", "out_lin", "attn.c_proj", "dense_proj", ".o")),
    (
        "mlp",
        (
            "intermediate",
            "output.dense",
            "mlp",
            "fc1",
            "fc2",
            "c_fc",
            "gate_proj",
            "up_proj",
            "down_proj",
            "ffn",
            "lin1",
            "lin2",
            "wi",
            "wo",
        ),
    ),
)


def module_type(name: str) -> str:
    """q / k / v / o / mlp / other, from a module name (BERT, RoBERTa, DistilBERT, GPT-2, Llama namings)."""
    n = name.lower()
    for kind, patterns in _TYPES:
        for p in patterns:
            if p.startswith("."):
                if n.endswith(p):
                    return kind
            elif p in n:
                return kind
    return "other"


def layer_index(name: str) -> int:
    """The first all-digit dotted component (``encoder.layer.3.attention…`` → 3); −1 when none."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else -1


def write_csv(frame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
