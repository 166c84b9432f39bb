"""``TrialSpec``: everything one trial needs, as plain data that crosses to Ray workers as JSON.

The per-trial settings (data rows, lengths, prediction samples, device, what to save) are declared
once, on :class:`TrialSettings`: :class:`~lrvd_bench.config.ExperimentConfig` inherits them (and
validates them with pydantic, reading the ``Field`` constraints in their annotations, then the rules
of :meth:`TrialSettings.__post_init__`), and :meth:`~lrvd_bench.config.ExperimentConfig.expand`
copies them into each spec. A spec hashes to the ``config_hash`` stored in its result row, so a
trial can run on any node and be re-run exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from lrvd.protocol import AdapterConfig, TrainConfig
from lrvd_bench.errors import BenchError, unknown_choice

#: The 10 % the temperature-scaling baseline held out before the split became sweep-wide (40 of the
#: quickstart's 400 training questions, 225 of ARC-Easy's 2251).
DEFAULT_VALIDATION_FRACTION = 0.1
#: Top-level keys a search may not vary: they fix which rows every method trains, validates and is
#: evaluated on, so the comparison (and the paired differences) stay on the same data.
SWEEP_WIDE = ("validation_fraction", "split_seed", "data_dir", "limit_eval")
#: The core's dataclasses a dotted key may reach into (``train.lr``, ``adapter.r``).
NESTED = {"adapter": AdapterConfig, "train": TrainConfig}

Count = Annotated[int, Field(ge=1)]


def as_list(value: Any) -> Any:
    """``"a, b"`` (a flag or ``--set``) -> ``["a", "b"]``; a lone scalar -> ``[scalar]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value if isinstance(value, (list, tuple)) else [value]


Names = Annotated[list[str], BeforeValidator(as_list)]
SampleCount = Annotated[int, Field(ge=0)]


def setting(default: Any, help: str, *, flag: bool = True, per_trial: bool = False) -> Any:
    """A settings field: its default (a callable: a factory), its ``help``, and whether it is a
    ``bench run`` flag (``flag``) and copied into every :class:`TrialSpec` (``per_trial``)."""
    meta = {"help": help, **({"flag": True} if flag else {}), **({"per_trial": True} if per_trial else {})}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def per_trial(default: Any, help: str, flag: bool = True) -> Any:
    return setting(default, help, flag=flag, per_trial=True)


@dataclass(kw_only=True)
class TrialSettings:
    """The settings every trial carries; a sweep sets them once."""

    data_dir: str | None = per_trial(None, "directory with task data (default: bundled slices / HF cache)")
    limit_train: Count | None = per_trial(None, "use at most N training examples")
    limit_eval: Count | None = per_trial(None, "evaluate on at most N examples (of each evaluation task)")
    eval_tasks: Names | None = per_trial(
        None,
        "comma-separated tasks whose evaluation splits every trained adapter is also scored on, without "
        "retraining (distribution shift: train on obqa, evaluate on arc-c,arc-e,mmlu-chem,mmlu-phy); the "
        "training task is always scored",
    )
    validation_fraction: float = per_trial(
        DEFAULT_VALIDATION_FRACTION,
        "fraction of the training examples held out once as the validation split every method shares "
        "(temperature scaling, Laplace grid search, checkpoint and hyper-parameter selection); every "
        "method trains on the rest; 0: none",
    )
    split_seed: int = per_trial(
        0,
        "seed of the data split (limit_train / limit_eval subsamples and the validation split); not the "
        "trial seed, so every method and seed sees the same rows",
    )
    max_length: Count = per_trial(64, "max tokens per (question, choice) sequence")
    eval_batch_size: Count = per_trial(16, "examples per evaluation batch")
    n_samples: SampleCount | None = per_trial(None, "posterior samples at prediction (None: each method's default)")
    device: str = per_trial("auto", "auto | cpu | cuda | cuda:N (inside each trial)")
    load_in_8bit: bool = per_trial(
        False,
        "frozen base weights in 8-bit (bitsandbytes, CUDA only; BLoB's LLaMA scripts); needs uv sync --extra int8",
        flag=False,
    )
    save_adapter: bool = per_trial(True, "save each trial's adapter (safetensors)", flag=False)
    save_predictions: bool = per_trial(True, "save each trial's eval probabilities (npz)", flag=False)

    def __post_init__(self) -> None:
        """What the annotations cannot say: the device's form, and 8-bit weights only where CUDA runs."""
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise unknown_choice("device", self.device, ["auto", "cpu", "cuda", "cuda:N"])
        if self.load_in_8bit and self.device == "cpu":
            raise BenchError(
                "load_in_8bit needs a CUDA device (bitsandbytes int8 kernels); set device: cuda or load_in_8bit: false"
            )


PER_TRIAL: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialSettings))
#: The same fields, frozen: the base of the immutable :class:`TrialSpec`.
FrozenTrialSettings = dataclasses.make_dataclass(
    "FrozenTrialSettings",
    [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in dataclasses.fields(TrialSettings)],
    frozen=True,
    kw_only=True,
)
FrozenTrialSettings.__module__ = __name__


@dataclass(frozen=True)
class TrialSpec(FrozenTrialSettings):
    """Everything one trial needs; plain data so it crosses to Ray workers as JSON."""

    method: str
    task: str
    model: str
    seed: int
    adapter: dict[str, Any]
    train: dict[str, Any]
    method_params: dict[str, Any] = field(default_factory=dict)
    search_point: dict[str, Any] = field(default_factory=dict)
    #: "final" (scored on the evaluation split) or "selection" (validation split only, lrvd_bench.selection)
    stage: str = "final"

    #: Fields that say *where* a trial runs, not *what* it computes: left out of the hash.
    UNHASHED = ("device", "save_adapter", "save_predictions")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise BenchError(f"unknown trial-spec keys {sorted(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)

    @property
    def config_hash(self) -> str:
        """sha256 (first 12 hex digits) of the canonical JSON of everything that affects the result."""
        data = {k: v for k, v in self.to_dict().items() if k not in self.UNHASHED}
        if data.get("stage") == "final":  # the usual stage leaves hashes as they were before stages existed
            data.pop("stage")
        if not data.get("eval_tasks"):  # likewise a trial scored on its own task only
            data.pop("eval_tasks", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def trial_id(self) -> str:
        """Stable, readable folder name: ``<method>-<task>-s<seed>-<hash8>``."""
        return f"{self.method}-{self.task}-s{self.seed}-{self.config_hash[:8]}"

    def with_overrides(self, point: dict[str, Any]) -> TrialSpec:
        """Apply a search-space point given by dotted keys (``train.lr``, ``adapter.r``,
        ``method_params.<method>.<name>``, or a top-level field such as ``max_length``)."""
        data = self.to_dict()
        for key, value in point.items():
            head, _, rest = key.partition(".")
            if head == "method_params":
                method, _, name = rest.partition(".")
                if method == self.method:
                    data["method_params"][name] = value
            elif head in NESTED:
                data[head][rest] = value
            elif head in data and not rest:
                data[head] = value
            else:
                raise BenchError(f"cannot apply search-space key {key!r} to a trial")
        data["search_point"] = {**self.search_point, **point}
        return TrialSpec.from_dict(data)

    def with_stage(self, stage: str) -> TrialSpec:
        return dataclasses.replace(self, stage=stage)

    def build_adapter(self) -> AdapterConfig:
        return AdapterConfig(**self.adapter)

    def build_train(self) -> TrainConfig:
        return TrainConfig(**self.train)


def check_search_key(key: str, where: str = "search_space") -> None:
    """A dotted key a search (``search_space`` or ``selection``) may vary; else a one-line error."""
    head, _, rest = key.partition(".")
    if head in NESTED:
        valid = [f.name for f in dataclasses.fields(NESTED[head])]
        if rest not in valid:
            raise BenchError(f"unknown {where} key {key!r}; valid: {', '.join(head + '.' + v for v in valid)}")
    elif head == "method_params":
        if rest.count(".") != 1:
            raise BenchError(f"{where} key {key!r} must be method_params.<method>.<name>")
    elif head not in TrialSpec.__dataclass_fields__ or rest or head in ("method", "task", "seed", *SWEEP_WIDE):
        raise BenchError(
            f"unknown {where} key {key!r}; use train.<field>, adapter.<field>, method_params.<method>.<name>, "
            "or max_length / limit_train / eval_batch_size / n_samples (the data split keys "
            + ", ".join(SWEEP_WIDE)
            + " are fixed for the whole sweep)"
        )


def portable_model_name(model: str) -> str:
    """The backbone as a result row names it: an alias or hub id as given, a local checkpoint by its
    folder name (``local:tiny-bert``), so rows hold no machine paths."""
    path = Path(model)
    return f"local:{path.name}" if path.is_absolute() or model.startswith((".", "~")) else model
