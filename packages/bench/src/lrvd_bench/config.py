"""``ExperimentConfig``: the one validated description of a sweep, and its expansion into trials.

The dataclass below is the single source for YAML keys and CLI flags: every field carries its help
text (``metadata["help"]``), and fields marked ``metadata["flag"]`` become ``bench run`` flags (see
:func:`add_flags`). Flow::

    raw YAML  ─┐
    --set k=v ─┼─> load_config() ─> ExperimentConfig (unknown keys, names and values rejected here)
    --flags   ─┘                        └─> expand() -> [TrialSpec]   method × task × seed × grid point

A :class:`TrialSpec` holds everything one trial needs, is JSON-serialisable, and hashes to the
``config_hash`` stored in its result row, so a trial can run on any Ray node and be re-run exactly.
Random search spaces (``loguniform``, ``choice``, …) are sampled by Ray Tune and applied inside the
trial with :meth:`TrialSpec.with_overrides`; ``grid_search`` points are expanded here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrvd.protocol import AdapterConfig, TrainConfig
from lrvd_bench.errors import BenchError, LRVDError, unknown_choice
from lrvd_bench.targets import BY_ARCHITECTURE, BY_ARCHITECTURE_HELP

#: Experiment trackers ``loggers:`` accepts (Ray Tune logger callbacks; see lrvd_bench.sweep.trackers).
LOGGERS = ("csv", "json", "tensorboard", "mlflow", "wandb")
#: Fraction of the training set held out as the shared validation split unless a config says otherwise:
#: the 10 % the temperature-scaling baseline held out before the split became sweep-wide (40 of the
#: quickstart's 400 training questions, 225 of ARC-Easy's 2251).
DEFAULT_VALIDATION_FRACTION = 0.1

#: The method every other method is compared with (the leaderboard's ``delta_*`` columns) unless a
#: config names another.
DEFAULT_REFERENCE = "lora"

#: Search-space samplers accepted in YAML (``{"train.lr": {"loguniform": [1e-4, 1e-2]}}``).
SAMPLERS = ("grid_search", "choice", "uniform", "loguniform", "quniform", "qloguniform", "randint", "lograndint")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv(text)]
    except ValueError:
        raise BenchError(f"expected comma-separated integers, got {text!r}") from None


@dataclass
class ExperimentConfig:
    """A sweep: methods × tasks × seeds (× search-space points) on one backbone.

    ``adapter`` and ``train`` are the core's :class:`~lrvd.protocol.AdapterConfig` and
    :class:`~lrvd.protocol.TrainConfig`, shared by every method so the comparison is fair;
    ``method_params`` holds each method's own hyper-parameters (its ``Params`` dataclass).
    """

    methods: list[str] | str = field(
        default="all", metadata={"help": "comma-separated method names, or 'all'", "flag": _csv}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["arc-e"], metadata={"help": "comma-separated task names", "flag": _csv}
    )
    model: str = field(
        default="minilm", metadata={"help": "backbone alias (minilm, smollm2-135m), HF id or local dir", "flag": str}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "comma-separated seeds, e.g. 0,1,2", "flag": _csv_ints}
    )
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(target_modules=[BY_ARCHITECTURE]),
        metadata={"help": "adapter placement and rank (target_modules, r, alpha)"},
    )
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "optimisation settings shared by all methods"}
    )
    method_params: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "per-method hyper-parameters: {method: {name: value}}"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "per_trial": True,
            "help": "directory with task data (default: bundled slices / HF cache)",
            "flag": str,
        },
    )
    limit_train: int | None = field(
        default=None, metadata={"per_trial": True, "help": "use at most N training examples", "flag": int}
    )
    limit_eval: int | None = field(
        default=None, metadata={"per_trial": True, "help": "evaluate on at most N examples", "flag": int}
    )
    validation_fraction: float = field(
        default=DEFAULT_VALIDATION_FRACTION,
        metadata={
            "per_trial": True,
            "help": "fraction of the training examples held out once as the validation split every method "
            "shares (temperature scaling, Laplace grid search, checkpoint and hyper-parameter "
            "selection); every method trains on the rest; 0: none",
            "flag": float,
        },
    )
    split_seed: int = field(
        default=0,
        metadata={
            "per_trial": True,
            "help": "seed of the data split (limit_train / limit_eval subsamples and the validation "
            "split); not the trial seed, so every method and seed sees the same rows",
            "flag": int,
        },
    )
    max_length: int = field(
        default=64, metadata={"per_trial": True, "help": "max tokens per (question, choice) sequence", "flag": int}
    )
    eval_batch_size: int = field(
        default=16, metadata={"per_trial": True, "help": "examples per evaluation batch", "flag": int}
    )
    n_samples: int | None = field(
        default=None,
        metadata={
            "per_trial": True,
            "help": "posterior samples at prediction (None: each method's default)",
            "flag": int,
        },
    )
    device: str = field(
        default="auto",
        metadata={"per_trial": True, "help": "auto | cpu | cuda | cuda:N (inside each trial)", "flag": str},
    )
    load_in_8bit: bool = field(
        default=False,
        metadata={
            "per_trial": True,
            "help": "frozen base weights in 8-bit (bitsandbytes, CUDA only; BLoB's LLaMA "
            "scripts); needs uv sync --extra int8",
        },
    )
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs reserved per trial", "flag": float})
    gpus_per_trial: float | None = field(
        default=None,
        metadata={
            "help": "GPUs per trial, fractional allowed (default: 1 if the cluster has GPUs, else 0)",
            "flag": float,
        },
    )
    max_concurrent_trials: int | None = field(
        default=None, metadata={"help": "cap on trials running at once (default: as resources allow)", "flag": int}
    )
    num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs of the local Ray instance (ignored with --address)", "flag": int}
    )
    address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster address, e.g. auto or HOST:PORT (default: start a local Ray)", "flag": str},
    )
    output: str | None = field(
        default=None, metadata={"help": "run directory (default: runs/<config name>-<timestamp>)", "flag": str}
    )
    search_space: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Ray Tune search spaces by dotted key, e.g. {train.lr: {loguniform: [1e-4, 1e-2]}}"},
    )
    num_samples: int = field(
        default=1, metadata={"help": "samples of the search space (Ray Tune num_samples)", "flag": int}
    )
    scheduler: str | None = field(
        default=None,
        metadata={
            "help": "Ray Tune trial scheduler: fifo (default) | asha (stops trials early on the "
            "validation metric; needs train.eval_every)"
        },
    )
    selection: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "per-method selection on the validation split before the final seeds: {search_space: "
            "{METHOD: {KEY: [values]}}, metric: val_nll | val_accuracy, seeds: [0]} "
            "(lrvd_bench.selection)"
        },
    )
    loggers: list[str] = field(
        default_factory=lambda: ["csv", "tensorboard"],
        metadata={
            "help": "experiment trackers fed every log_every steps: "
            + ", ".join(LOGGERS)
            + " (mlflow, wandb: optional extras)",
            "flag": _csv,
        },
    )
    reuse_actors: bool = field(
        default=False,
        metadata={
            "help": "run successive trials in one Ray worker process: saves ~8 s of imports per trial; "
            "peak memory stays per trial, but on CPU a worker's first trial also carries one-time "
            "lazy initialisation (~25 MiB on MiniLM)"
        },
    )
    reference: str = field(
        default=DEFAULT_REFERENCE,
        metadata={
            "help": "method the leaderboard's paired differences (delta_* columns with paired-bootstrap "
            "intervals) compare every other method with",
            "flag": str,
        },
    )
    save_adapter: bool = field(
        default=True, metadata={"per_trial": True, "help": "save each trial's adapter (safetensors)"}
    )
    save_predictions: bool = field(
        default=True, metadata={"per_trial": True, "help": "save each trial's eval probabilities (npz)"}
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Resolve ``all``, check names and values; raises :class:`BenchError` with one line."""
        valid_methods = available_methods()
        if isinstance(self.methods, str):
            self.methods = usable_methods() if self.methods.strip() == "all" else _csv(self.methods)
        if not self.methods:
            raise BenchError("no methods selected; valid choices: " + ", ".join(valid_methods))
        for name in self.methods:
            if name not in valid_methods:
                raise unknown_choice("method", name, valid_methods)
        if isinstance(self.tasks, str):
            self.tasks = _csv(self.tasks)
        valid_tasks = available_tasks()
        if not self.tasks:
            raise BenchError("no tasks selected; valid choices: " + ", ".join(valid_tasks))
        for name in self.tasks:
            if name not in valid_tasks:
                raise unknown_choice("task", name, valid_tasks)
        if isinstance(self.seeds, (int, str)):
            self.seeds = _csv_ints(str(self.seeds))
        if not self.seeds:
            raise BenchError("seeds must list at least one seed")
        self.seeds = [int(s) for s in self.seeds]
        for name in self.method_params:
            if name not in valid_methods:
                raise unknown_choice("method in method_params:", name, valid_methods)
            if not isinstance(self.method_params[name], dict):
                raise BenchError(f"method_params.{name} must be a mapping of hyper-parameters")
        if self.reference not in valid_methods:
            raise unknown_choice("reference method", self.reference, valid_methods)
        if self.device not in {"auto", "cpu", "cuda"} and not re.fullmatch(r"cuda:\d+", self.device):
            raise unknown_choice("device", self.device, ["auto", "cpu", "cuda", "cuda:N"])
        if self.load_in_8bit and self.device == "cpu":
            raise BenchError(
                "load_in_8bit needs a CUDA device (bitsandbytes int8 kernels); set device: cuda or load_in_8bit: false"
            )
        if self.scheduler not in (None, "fifo", "asha"):
            raise unknown_choice("scheduler", self.scheduler, ["fifo", "asha"])
        if self.scheduler == "asha" and not getattr(self.train, "eval_every", 0):
            raise BenchError("scheduler asha stops trials on the validation metric: set train.eval_every > 0")
        if self.selection:
            if self.search_space:
                raise BenchError(
                    "selection and search_space cannot be combined: put the grid under selection.search_space.<method>"
                )
            if self.validation_fraction <= 0:
                raise BenchError("selection scores on the validation split: set validation_fraction > 0 (got 0)")
            validate_selection(self.selection, self.methods)
        if isinstance(self.loggers, str):
            self.loggers = _csv(self.loggers)
        for name in self.loggers or []:
            if name not in LOGGERS:
                raise unknown_choice("logger", name, LOGGERS)
        if self.cpus_per_trial <= 0:
            raise BenchError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise BenchError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BenchError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.validation_fraction == 0.0:
            if self.train.eval_every:
                raise BenchError(
                    f"train.eval_every={self.train.eval_every} selects checkpoints on the validation "
                    "split; set validation_fraction > 0 (got 0) or eval_every to 0"
                )
            self._check_no_method_needs_validation()
        if self.num_samples < 1:
            raise BenchError(f"num_samples must be >= 1, got {self.num_samples}")
        for key, sampler in self.search_space.items():
            _check_search_key(key)
            if not isinstance(sampler, dict) or len(sampler) != 1 or next(iter(sampler)) not in SAMPLERS:
                raise BenchError(
                    f"search_space.{key} must be one mapping {{sampler: args}}; valid samplers: {', '.join(SAMPLERS)}"
                )

    def _check_no_method_needs_validation(self) -> None:
        """Without a validation split, methods that fit on one (``needs_validation``) cannot run."""
        from lrvd.registry import get_method

        for name in self.methods:
            method = get_method(name)(**self.method_params.get(name, {}))
            if method.needs_validation:
                raise BenchError(
                    f"method {name!r} fits on the validation split; set validation_fraction > 0 "
                    "(got 0) or drop the method"
                )

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- expansion -------------------------------------------------------------------------------
    def grid_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the ``grid_search`` entries (``[{}]`` when there are none)."""
        grid = {k: v["grid_search"] for k, v in self.search_space.items() if "grid_search" in v}
        keys = sorted(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]

    def random_space(self) -> dict[str, dict[str, Any]]:
        """Search-space entries Ray Tune samples (everything but ``grid_search``)."""
        return {k: v for k, v in self.search_space.items() if "grid_search" not in v}

    def expand(self) -> list[TrialSpec]:
        """One :class:`TrialSpec` per method × task × seed × grid point, in a stable order."""
        specs = []
        for method, task, point, seed in itertools.product(self.methods, self.tasks, self.grid_points(), self.seeds):
            train = dataclasses.asdict(self.train)
            train["seed"] = seed
            spec = TrialSpec(
                method=method,
                task=task,
                model=self.model,
                seed=seed,
                adapter=dataclasses.asdict(self.adapter),
                train=train,
                method_params=dict(self.method_params.get(method, {})),
                **{name: getattr(self, name) for name in PER_TRIAL},
            )
            specs.append(spec.with_overrides(point) if point else spec)
        return specs


# -- trial spec ----------------------------------------------------------------------------------
def _per_trial_fields() -> list[tuple[str, Any, Any]]:
    """``ExperimentConfig``'s fields marked ``per_trial``, re-declared (fresh ``Field`` objects)."""
    return [
        (f.name, f.type, field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in dataclasses.fields(ExperimentConfig)
        if f.metadata.get("per_trial")
    ]


#: The settings every trial carries, with ExperimentConfig's defaults and help: a sweep sets them once
#: and :meth:`ExperimentConfig.expand` copies them into each :class:`TrialSpec`.
TrialSettings = dataclasses.make_dataclass("TrialSettings", _per_trial_fields(), frozen=True, kw_only=True)
TrialSettings.__module__ = __name__
PER_TRIAL: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialSettings))


@dataclass(frozen=True)
class TrialSpec(TrialSettings):
    """Everything one trial needs; plain data so it crosses to Ray workers as JSON.

    The per-trial settings (``data_dir`` … ``save_predictions``) come from :class:`TrialSettings`,
    i.e. from the ``ExperimentConfig`` fields marked ``per_trial``: declared once, there.
    """

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
            elif head in ("train", "adapter"):
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


def portable_model_name(model: str) -> str:
    """The backbone as a result row names it: an alias or hub id as given, a local checkpoint by its
    folder name (``local:tiny-bert``), so rows hold no machine paths."""
    path = Path(model)
    return f"local:{path.name}" if path.is_absolute() or model.startswith((".", "~")) else model


# -- registries (names only: no heavy imports) ---------------------------------------------------
def available_methods() -> list[str]:
    from lrvd.registry import list_methods

    return list_methods()


def usable_methods() -> list[str]:
    """What ``methods: all`` means: every registered method that imports; a broken plugin is skipped
    with a one-line warning (naming it by name still fails, with the same line)."""
    import sys

    from lrvd.registry import METHODS

    usable, broken = METHODS.usable()
    for reason in broken.values():
        print(f"bench: warning: skipped {reason}", file=sys.stderr)
    return usable


def available_tasks() -> list[str]:
    from lrvd_bench.tasks import list_tasks

    return list(list_tasks())


# -- loading -------------------------------------------------------------------------------------
TOP_KEYS = [f.name for f in dataclasses.fields(ExperimentConfig)]
NESTED = {"adapter": AdapterConfig, "train": TrainConfig}
ALIASES = {"task": "tasks", "method": "methods", "seed": "seeds"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_or_value(value: Any) -> Any:
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); read it as the number meant."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if re.fullmatch(r"[+-]?\d+", value.strip()) else number
    if isinstance(value, list):
        return [_number_or_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _number_or_value(v) for k, v in value.items()}
    return value


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """Convert YAML/CLI text to the field's declared scalar type; a bad value is a one-line error."""
    if value is None or not isinstance(value, str):
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and annotation.startswith("int")
            and float(value).is_integer()
        ):
            return int(value)
        return value
    text = value.strip()
    if "None" in annotation and text.lower() in ("none", "null", "~", ""):
        return None
    try:
        if annotation.startswith("bool"):
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if annotation.startswith("int"):
            return int(float(text)) if float(text).is_integer() else int(text)
        if annotation.startswith("float"):
            return float(text)
    except ValueError:
        raise BenchError(f"bad value for {key}: {value!r} (expected {annotation})") from None
    return value


#: Top-level keys a search space may not vary: they fix which rows every method trains, validates and is
#: evaluated on, so the comparison (and the paired differences) stay on the same data.
SWEEP_WIDE = ("validation_fraction", "split_seed", "data_dir", "limit_eval")


def _check_search_key(key: str) -> None:
    check_search_key(key)


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


# -- the selection: block -----------------------------------------------------------------------
#: The ``selection:`` block's metrics (True: higher is better) and keys (lrvd_bench.selection runs it).
SELECTION_METRICS = {"val_nll": False, "val_accuracy": True}
SELECTION_KEYS = ("search_space", "metric", "seeds")


def selection_dotted_key(method: str, key: str) -> str:
    """A selection KEY as the dotted key :meth:`TrialSpec.with_overrides` applies."""
    head = key.partition(".")[0]
    if "." in key or head in TrialSpec.__dataclass_fields__:
        return key
    return f"method_params.{method}.{key}"


def validate_selection(block: dict[str, Any], methods: list[str]) -> None:
    """Check a ``selection:`` block; every mistake is one line naming the bad value and the choices."""
    if not isinstance(block, dict):
        raise BenchError("selection must be a mapping with keys " + ", ".join(SELECTION_KEYS))
    for key in block:
        if key not in SELECTION_KEYS:
            raise unknown_choice("selection key", key, SELECTION_KEYS)
    metric = block.get("metric", "val_nll")
    if metric not in SELECTION_METRICS:
        raise unknown_choice("selection metric", metric, list(SELECTION_METRICS))
    seeds = block.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise BenchError(f"selection.seeds must list at least one integer seed, got {seeds!r}")
    space = block.get("search_space") or {}
    if not isinstance(space, dict) or not space:
        raise BenchError("selection.search_space must map at least one method to {KEY: [values]}")
    for method, grid in space.items():
        if method not in methods:
            raise unknown_choice("method in selection.search_space:", method, methods)
        if not isinstance(grid, dict) or not grid:
            raise BenchError(f"selection.search_space.{method} must map KEYs to lists of values")
        for key, values in grid.items():
            dotted = selection_dotted_key(method, key)
            if not dotted.startswith("method_params."):
                check_search_key(dotted, f"selection.search_space.{method}")
            if not isinstance(values, list) or not values:
                raise BenchError(f"selection.search_space.{method}.{key} must be a non-empty list of values")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a mapping; missing file or malformed YAML -> one-line BenchError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise BenchError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-3)`` — nested assignment used by ``--set`` and flags."""
    parts = key.split(".")
    parts[0] = ALIASES.get(parts[0], parts[0])
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "methods=lora,bayeslora"]`` -> dotted overrides (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out[key.strip()] = _number_or_value(value)
    return out


def config_from_dict(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a raw mapping (YAML + overrides) into an :class:`ExperimentConfig`."""
    data = {ALIASES.get(k, k): v for k, v in data.items()}
    for key in data:
        if key not in TOP_KEYS:
            raise BenchError(f"unknown key {key!r} in {source}; valid keys: {', '.join(TOP_KEYS)}")
    kwargs: dict[str, Any] = {}
    annotations = {f.name: str(f.type) for f in dataclasses.fields(ExperimentConfig)}
    for key, value in data.items():
        if key == "adapter" and isinstance(value, dict | None):  # targets by architecture unless named
            value = {"target_modules": [BY_ARCHITECTURE], **(value or {})}
        if key in NESTED:
            kwargs[key] = _nested(NESTED[key], key, value, source)
        elif key in ("method_params", "search_space", "selection"):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise BenchError(f"{key} in {source} must be a mapping")
            kwargs[key] = _number_or_value(value)
        else:
            kwargs[key] = _coerce(value, annotations[key], key)
    try:
        return ExperimentConfig(**kwargs)
    except LRVDError:
        raise
    except (TypeError, ValueError) as err:
        raise BenchError(f"bad value in {source}: {err}") from None


def _nested(cls: type, name: str, value: Any, source: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise BenchError(f"{name} in {source} must be a mapping of its fields")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            valid = ", ".join(f"{name}.{k}" for k in fields)
            raise BenchError(f"unknown key '{name}.{key}' in {source}; valid keys: {valid}")
    kwargs = {k: _coerce(_number_or_value(v), fields[k], f"{name}.{k}") for k, v in value.items()}
    try:
        return cls(**kwargs)
    except LRVDError:
        raise
    except (TypeError, ValueError) as err:
        raise BenchError(f"bad value for {name} in {source}: {err}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """YAML file (optional) + dotted overrides (CLI flags and ``--set``; these win)."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "config"
    data = {ALIASES.get(k, k): v for k, v in data.items()}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, source)


# -- default config ------------------------------------------------------------------------------
def default_config_path() -> Path:
    """``configs/quickstart.yaml`` under the working directory, else the copy shipped in the package."""
    local = Path.cwd() / "configs" / "quickstart.yaml"
    if local.is_file():
        return local
    return Path(__file__).parent / "configs" / "quickstart.yaml"


# -- CLI flags derived from the dataclass --------------------------------------------------------
#: Flags for nested settings that are common enough to deserve one (dest -> dotted key).
SHORTCUT_FLAGS = {
    "max_steps": ("train.max_steps", int, "optimizer steps per trial (train.max_steps)"),
    "task": ("tasks", _csv, "task name (same as --tasks)"),
}


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's built-in default (``default_factory`` called), for help texts."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    return str(value)


def add_flags(parser: Any) -> None:
    """Add one ``--flag`` per ExperimentConfig field marked with a ``flag`` parser, plus shortcuts.

    Flags default to None ("keep the config file's value"); the help shows the built-in default
    that applies when the config file leaves the key out too."""
    for f in dataclasses.fields(ExperimentConfig):
        parse = f.metadata.get("flag")
        if parse is None:
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=parse,
            default=None,
            help=f.metadata["help"]
            + ("" if field_default(f) is None else f" (built-in default: {_shown(field_default(f))})"),
        )
    for dest, (_, parse, help_text) in SHORTCUT_FLAGS.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, type=parse, default=None, help=help_text)


def nested_keys_help() -> str:
    """The ``train.*`` and ``adapter.*`` keys with type, built-in default and help (``bench run --help``)."""
    lines = ["config keys shared by all methods (YAML, or --set KEY=VALUE; built-in defaults):"]
    defaults = {f.name: field_default(f) for f in dataclasses.fields(ExperimentConfig) if f.name in NESTED}
    rows = [
        (
            f"{prefix}.{f.name}",
            str(f.type).replace("typing.", ""),
            _shown(getattr(defaults[prefix], f.name)),
            f.metadata.get("help", ""),
        )
        for prefix, cls in NESTED.items()
        for f in dataclasses.fields(cls)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for key, kind, default, help_text in rows:
        lines.append(f"  {key:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {help_text}")
    lines.append(BY_ARCHITECTURE_HELP)
    lines.append(
        "method hyper-parameters: `bench list-methods --params [METHOD]`; set them with "
        "--param METHOD.KEY=VALUE or --set method_params.METHOD.KEY=VALUE"
    )
    return "\n".join(lines)


def flag_overrides(args: Any) -> dict[str, Any]:
    """The dotted overrides given by flags (flags left unset contribute nothing)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ExperimentConfig):
        if f.metadata.get("flag") is not None and getattr(args, f.name, None) is not None:
            out[f.name] = getattr(args, f.name)
    for dest, (key, _, _) in SHORTCUT_FLAGS.items():
        if getattr(args, dest, None) is not None:
            out[key] = getattr(args, dest)
    return out
