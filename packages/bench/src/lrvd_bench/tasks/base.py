"""What a benchmark task is: its examples, where they come from, and how a model sees their text.

A :class:`Task` turns raw records into :class:`Example` objects (question, choices, gold index,
optional context) and owns the text formatting for both model families, so that the backbone
wrappers and loaders stay task-agnostic:

* encoder models get ``encoder_inputs(example)`` — one (text, text-pair) per choice for
  multiple-choice tasks (scored by ``AutoModelForMultipleChoice``), a single pair for
  classification tasks;
* causal LMs get ``causal_prompt(example)`` — a lettered-choices prompt
  ("Select one of the choices that answers the following question: {q} Choices: A. .. B. .. Answer:")
  and are scored by the next-token logits of ``option_words()``; docs/methods.md lists how this
  differs from the prompts and letter tokens of BLoB's causal-LM scripts.

Where examples come from (``source="auto"``, the default; decided once per call by
:meth:`Task.resolve_source`, so the train and eval splits of one run always come from the same place):

1. ``data_dir`` when given: ``<data_dir>/<task folder>/`` if that folder exists, else ``<data_dir>``
   itself, holding JSONL files named like the bundled ones (``train.jsonl``, ``validation.jsonl``,
   ``test.jsonl``, in the Hugging Face schema of the task). A missing directory or file is a one-line
   :class:`~lrvd.errors.LRVDError` naming the path.
2. the copy bundled in this package (``lrvd_bench/data/<task folder>/``, see ``DATA.md``);
3. the Hugging Face hub through ``datasets.load_dataset(hub_id, hub_config)`` — only reached when
   neither local copy exists (or with ``source="hub"``). A failure there (e.g. offline) is a
   one-line ``LRVDError`` ending in "offline: use --data-dir".

Local data is preferred because it is reproducible, checksummed and never touches the network, so
a default run cannot hang offline. ``source="hub"`` asks for the hub explicitly (the real protocol
splits of WinoGrande and BoolQ, whose training sets are not bundled); ``source="local"`` forbids it.

Carved splits. WinoGrande and BoolQ ship only their dev sets locally. When a local copy has the eval
file but no train file, the dev set is split once, with a seeded permutation (``Carve``), into
disjoint train and eval parts (60 % / 40 % by default; WG-S keeps at most 640 training examples, its
protocol size, so offline WG-S ⊂ WG-M like the real nested training sets, and both share one eval
part). :meth:`Task.split_note` then returns e.g. ``"carved from dev: 760 train / 507 eval (seed 0)"``
so leaderboards can flag the run as not the paper's split.

Evaluation-only tasks (MMLU college chemistry / physics) have no "train" split: a local copy needs only
their eval file, ``load("train")`` is a one-line error, and a sweep cannot name them as training tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lrvd.errors import LRVDError, first_line, unknown_choice

BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SOURCES = ("auto", "local", "hub")
TaskKind = Literal["multiple_choice", "classification"]
SplitName = Literal["train", "eval", "test"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Example:
    """One question. ``label`` indexes ``choices``; ``context`` is a passage (BoolQ) or ``None``."""

    question: str
    choices: list[str]
    label: int
    context: str | None = None
    id: str = ""


@dataclass(frozen=True)
class Carve:
    """A seeded, disjoint train/eval split of a dev set, used when no train split exists locally.

    The permutation depends only on ``seed`` and the dev-set size, so every method and trial seed
    of a comparison sees the same eval part.
    """

    train_fraction: float = 0.6
    max_train: int | None = None

    def indices(self, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
        """``(train_indices, eval_indices)`` into the dev file, each sorted (file order)."""
        order = list(range(n))
        random.Random(seed).shuffle(order)
        n_pool = int(round(n * self.train_fraction))
        train = order[:n_pool][: self.max_train] if self.max_train else order[:n_pool]
        return sorted(train), sorted(order[n_pool:])


@dataclass(frozen=True)
class DataSource:
    """Where one run's examples come from: ``kind`` is "data_dir", "bundled" or "hub"."""

    kind: str
    location: str
    carved: bool = False

    def describe(self) -> str:
        return f"{self.kind}:{self.location}" + (" (carved)" if self.carved else "")


@dataclass(frozen=True)
class Task:
    """A benchmark task. Subclasses implement :meth:`convert` for their record schema.

    ``splits`` maps the bench's split names ("train", "eval", optionally "test") to the dataset's
    split names, which are also the local file stems (``validation`` -> ``validation.jsonl``).
    A task without a "train" split is evaluation-only (:attr:`eval_only`): it scores adapters trained
    on another task, and only its eval file is needed locally.
    """

    name: str
    description: str
    n_classes: int
    kind: TaskKind
    hub_id: str
    hub_config: str | None
    folder: str
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "eval": "validation"})
    metric: str = "accuracy"
    carve: Carve | None = None
    paper_sizes: tuple[int, int] | None = None  # (train, eval) of the BLoB protocol (BLoB paper)

    @property
    def eval_only(self) -> bool:
        """No training split: the task only evaluates adapters trained on other tasks."""
        return "train" not in self.splits

    # -- records -> examples -----------------------------------------------------------------
    def convert(self, record: dict[str, Any], fallback_id: str) -> Example:
        raise NotImplementedError

    # -- formatting ----------------------------------------------------------------------------
    def encoder_inputs(self, example: Example) -> list[tuple[str, str | None]]:
        """Encoder text pairs: one per choice (multiple choice) or one (classification)."""
        if self.kind == "classification":
            return [(example.question, example.context)]
        first = example.question if example.context is None else f"{example.context} {example.question}"
        return [(first, choice) for choice in example.choices]

    def causal_prompt(self, example: Example) -> str:
        """The lettered multiple-choice prompt of BLoB's RoBERTa path (docs/methods.md lists how it differs
        from the prompts of BLoB's LLaMA scripts)."""
        options = " ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(example.choices))
        return (
            "Select one of the choices that answers the following question: "
            f"{example.question} Choices: {options} Answer:"
        )

    def option_words(self) -> list[str]:
        """The words whose next-token logits a causal LM's class scores are (one per class)."""
        return list(LETTERS[: self.n_classes])

    # -- sources -------------------------------------------------------------------------------
    def file_name(self, split: str) -> str:
        return f"{self.splits[split]}.jsonl"

    def resolve_source(self, data_dir: str | os.PathLike[str] | None = None, source: str = "auto") -> DataSource:
        """Decide once where the examples come from (see the module docstring for the order)."""
        if source not in SOURCES:
            raise unknown_choice("data source", source, SOURCES)
        needed = [self.file_name(s) for s in ("train", "eval") if s in self.splits]
        if data_dir is not None:
            root = Path(data_dir).expanduser()
            if not root.is_dir():
                raise LRVDError(f"data dir {root} does not exist")
            folder = root / self.folder if (root / self.folder).is_dir() else root
            found = self._local_source("data_dir", folder)
            if found is None:
                alt = f", or {needed[-1]} alone to carve it" if self.carve else ""
                raise LRVDError(f"task {self.name!r}: {folder} lacks {' and '.join(needed)}{alt}")
            return found
        if source in ("auto", "local"):
            found = self._local_source("bundled", BUNDLED_DATA_DIR / self.folder)
            if found is not None:
                return found
            if source == "local":
                raise LRVDError(
                    f"task {self.name!r}: no local copy in {BUNDLED_DATA_DIR / self.folder}; use --data-dir"
                )
        return DataSource("hub", self.hub_id + (f"/{self.hub_config}" if self.hub_config else ""))

    def _local_source(self, kind: str, folder: Path) -> DataSource | None:
        eval_ = folder / self.file_name("eval")
        if self.eval_only:
            return DataSource(kind, str(folder)) if eval_.is_file() else None
        train = folder / self.file_name("train")
        if train.is_file() and eval_.is_file():
            return DataSource(kind, str(folder))
        if eval_.is_file() and self.carve is not None:
            return DataSource(kind, str(folder), carved=True)
        return None

    def split_note(
        self, data_dir: str | os.PathLike[str] | None = None, source: str = "auto", seed: int = 0
    ) -> str | None:
        """``None`` for the task's documented splits; a short note when eval is carved from dev."""
        src = self.resolve_source(data_dir, source)
        if not src.carved:
            return None
        n = _count_lines(Path(src.location) / self.file_name("eval"))
        train, eval_ = self.carve.indices(n, seed)  # type: ignore[union-attr]
        return f"carved from dev: {len(train)} train / {len(eval_)} eval (seed {seed})"

    # -- loading -------------------------------------------------------------------------------
    def load(
        self,
        split: SplitName,
        data_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        source: str = "auto",
    ) -> list[Example]:
        """Examples of ``split`` ("train" | "eval" | "test" where mapped), in a deterministic order.

        ``seed`` only seeds the carve of a dev-only copy; keep it fixed across a comparison.
        """
        if split == "train" and self.eval_only:
            raise LRVDError(f"task {self.name!r} is evaluation-only (no training split)")
        if split not in self.splits:
            raise unknown_choice(f"split for task {self.name!r}:", split, self.splits)
        src = self.resolve_source(data_dir, source)
        if src.carved:
            if split == "test":
                raise LRVDError(f"task {self.name!r}: no test split in {src.location}")
            stem = self.splits["eval"]
            records = _read_jsonl(Path(src.location) / self.file_name("eval"))
            train_idx, eval_idx = self.carve.indices(len(records), seed)  # type: ignore[union-attr]
            return [self.convert(records[i], f"{stem}-{i}") for i in (train_idx if split == "train" else eval_idx)]
        stem = self.splits[split]
        if src.kind == "hub":
            records = self._hub_records(stem)
        else:
            records = _read_jsonl(Path(src.location) / self.file_name(split))
        return [self.convert(r, f"{stem}-{i}") for i, r in enumerate(records)]

    def _hub_records(self, hub_split: str) -> list[dict[str, Any]]:
        """The real hub path: ``datasets.load_dataset(hub_id, hub_config, split=...)``."""
        where = f"{self.hub_id}" + (f" ({self.hub_config})" if self.hub_config else "")
        try:
            import datasets

            ds = datasets.load_dataset(self.hub_id, self.hub_config, split=hub_split)
            return [dict(r) for r in ds]
        except Exception as err:  # noqa: BLE001 - any hub/network/cache failure becomes one line
            raise LRVDError(
                f"task {self.name!r}: cannot load {where} split {hub_split!r} from the Hugging Face hub "
                f"({type(err).__name__}: {first_line(err, 160)}); offline: use --data-dir"
            ) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        raise LRVDError(f"data file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise LRVDError(f"data file {path} is not JSON Lines: {err}") from None


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def with_context(example: Example, context: str | None) -> Example:
    """A copy of ``example`` with another context (used to trim long passages to fit a prompt)."""
    return dataclasses.replace(example, context=context)
