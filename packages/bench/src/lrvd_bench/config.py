"""``ExperimentConfig``: the one validated description of a sweep, and its expansion into trials.

A pydantic dataclass: its annotations own types, ranges and unknown keys, down into the core's
``AdapterConfig``/``TrainConfig`` (typed field by field, then checked by their own ``__post_init__``),
and every failure is one line built from the ``ValidationError`` (:func:`lrvd_bench.errors.one_line`).
What stays here is what only the suite knows: registered names, rules across keys, dotted overrides and
search spaces (``grid_search`` points expand here; Ray Tune samples the rest, applied in the trial by
:meth:`TrialSpec.with_overrides`). Each method's ``Params`` are checked in :mod:`lrvd_bench.method_checks`;
the flags of ``bench run`` derive from the fields (:mod:`lrvd_bench.run_flags`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator
from pydantic.dataclasses import dataclass as validated_dataclass

from lrvd.protocol import AdapterConfig, TrainConfig
from lrvd_bench.errors import BenchError, one_line, unknown_choice
from lrvd_bench.evaluation import check_eval_tasks
from lrvd_bench.method_checks import check_methods, check_plans, check_selection, registered_methods, usable_methods
from lrvd_bench.targets import BY_ARCHITECTURE
from lrvd_bench.tasks import get_task, list_tasks, trainable_tasks
from lrvd_bench.trial_spec import (
    NESTED,
    PER_TRIAL,
    Count,
    Names,
    TrialSettings,
    TrialSpec,
    as_list,
    check_search_key,
    setting,
)
from lrvd_bench.yaml_files import parse_set, read_yaml  # noqa: F401 - parse_set re-exported with the loader

#: Experiment trackers ``loggers:`` accepts (Ray Tune logger callbacks; see lrvd_bench.sweep.trackers).
LOGGERS = ("csv", "json", "tensorboard", "mlflow", "wandb")
#: The method the leaderboard's paired differences compare every other method with.
DEFAULT_REFERENCE = "lora"
#: Search-space samplers accepted in YAML (``{"train.lr": {"loguniform": [1e-4, 1e-2]}}``).
SAMPLERS = ("grid_search", "choice", "uniform", "loguniform", "quniform", "qloguniform", "randint", "lograndint")
ALIASES = {"task": "tasks", "method": "methods", "seed": "seeds"}


def keep_ints(value: Any, handler: Any) -> Any:
    """Validate a core dataclass, keeping an int written for a float field (``alpha: 16``) as written,
    so spec hashes, and with them the trial ids of existing runs, stay what they were."""
    typed = handler({} if value is None else value)
    ints = {k: v for k, v in (value if isinstance(value, dict) else {}).items() if type(v) is int}
    return dataclasses.replace(typed, **{k: v for k, v in ints.items() if getattr(typed, k) == v})


Methods = Annotated[list[str], BeforeValidator(lambda v: usable_methods() if v in ("all", ["all"]) else as_list(v))]
Seeds = Annotated[list[int], BeforeValidator(as_list), Field(min_length=1)]
Mapping = Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value)]
Core = WrapValidator(keep_ints)


def by_architecture(value: Any) -> Any:
    """``adapter`` without ``target_modules`` targets the backbone's default modules (``auto``); a
    comma-separated string (``auto``, ``query,value``) is the list it names."""
    if isinstance(value, dict | None):
        value = {**(value or {}), "target_modules": as_list((value or {}).get("target_modules", [BY_ARCHITECTURE]))}
    return value


@validated_dataclass(config=ConfigDict(extra="forbid", validate_default=True))
class ExperimentConfig(TrialSettings):
    """A sweep: methods × tasks × seeds (× search-space points) on one backbone. ``adapter`` and ``train``
    are shared by every method so the comparison is fair; ``method_params`` holds each method's own
    hyper-parameters; the per-trial settings come from :class:`~lrvd_bench.trial_spec.TrialSettings`."""

    methods: Methods = setting("all", "comma-separated method names, or all")
    tasks: Names = setting(lambda: ["arc-e"], "comma-separated task names")
    model: str = setting("minilm", "backbone alias (minilm, smollm2-135m), HF id or local dir")
    seeds: Seeds = setting(lambda: [0], "comma-separated seeds, e.g. 0,1,2")
    adapter: Annotated[AdapterConfig, BeforeValidator(by_architecture), Core] = setting(
        lambda: AdapterConfig(target_modules=[BY_ARCHITECTURE]), "adapter placement and rank", flag=False
    )
    train: Annotated[TrainConfig, Core] = setting(TrainConfig, "optimisation shared by all methods", flag=False)
    method_params: Mapping = setting(dict, "per-method hyper-parameters: {method: {name: value}}", flag=False)
    cpus_per_trial: Annotated[float, Field(gt=0)] = setting(1.0, "CPUs reserved per trial")
    gpus_per_trial: Annotated[float, Field(ge=0)] | None = setting(
        None, "GPUs per trial, fractional allowed (default: 1 if the cluster has GPUs, else 0)"
    )
    max_concurrent_trials: Count | None = setting(None, "cap on trials running at once (default: as resources allow)")
    num_cpus: Count | None = setting(None, "CPUs of the local Ray instance (ignored with --address)")
    address: str | None = setting(None, "Ray cluster address, e.g. auto or HOST:PORT (default: start a local Ray)")
    output: str | None = setting(None, "run directory (default: runs/<config name>-<timestamp>)")
    search_space: Mapping = setting(
        dict, "Ray Tune search spaces by dotted key, e.g. {train.lr: {loguniform: [1e-4, 1e-2]}}", flag=False
    )
    num_samples: Count = setting(1, "samples of the search space (Ray Tune num_samples)")
    scheduler: Literal["fifo", "asha"] | None = setting(
        None,
        "Ray Tune trial scheduler: fifo (default) | asha (stops trials early on the validation metric; "
        "needs train.eval_every)",
        flag=False,
    )
    selection: Mapping = setting(
        dict,
        "per-method selection on the validation split before the final seeds: {search_space: {METHOD: "
        "{KEY: [values]}}, metric: val_nll | val_accuracy, seeds: [0]} (lrvd_bench.selection)",
        flag=False,
    )
    loggers: Names = setting(
        lambda: ["csv", "tensorboard"],
        f"experiment trackers fed every log_every steps: {', '.join(LOGGERS)} (mlflow, wandb: optional extras)",
    )
    reuse_actors: bool = setting(
        False,
        "run successive trials in one Ray worker process: saves ~8 s of imports per trial; peak memory stays "
        "per trial, but on CPU a worker's first trial also carries one-time lazy initialisation (~25 MiB on MiniLM)",
        flag=False,
    )
    reference: str = setting(
        DEFAULT_REFERENCE,
        "method the leaderboard's paired differences (delta_* columns with paired-bootstrap intervals) "
        "compare every other method with",
    )

    def __post_init__(self) -> None:
        """What types cannot say: registered names, rules across keys, each method's hyper-parameters."""
        valid = registered_methods()
        for kind, names, choices in (
            ("method", self.methods, valid),
            ("task", self.tasks, list(list_tasks())),
            ("evaluation task", self.eval_tasks or [], list(list_tasks())),
            ("method in method_params:", self.method_params, valid),
            ("logger", self.loggers, LOGGERS),
            ("reference method", [self.reference], valid),
        ):
            if not names and kind in ("method", "task"):
                raise BenchError(f"no {kind}s selected; valid choices: " + ", ".join(choices))
            for name in names:
                if name not in choices:
                    raise unknown_choice(kind, name, choices)
        for name in self.tasks:  # every task in ``tasks`` is trained on
            if get_task(name).eval_only:
                raise BenchError(
                    f"task {name!r} is evaluation-only (no training split); train on one of: "
                    + ", ".join(trainable_tasks())
                )
        check_eval_tasks(self.tasks, self.eval_tasks or [])
        super().__post_init__()  # the per-trial settings' own rules (device, 8-bit weights)
        for name in ("lr", "head_lr"):  # the core allows 0 (a frozen step); a sweep that trains nothing is a mistake
            if getattr(self.train, name) == 0:
                raise BenchError(f"train.{name} must be > 0, got {getattr(self.train, name)!r}")
        if self.scheduler == "asha" and not self.train.eval_every:
            raise BenchError("scheduler asha stops trials on the validation metric: set train.eval_every > 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BenchError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.validation_fraction == 0.0 and self.train.eval_every:
            raise BenchError(
                f"train.eval_every={self.train.eval_every} selects checkpoints on the validation split; "
                "set validation_fraction > 0 (got 0) or eval_every to 0"
            )
        for key, sampler in self.search_space.items():
            check_search_key(key)
            if not isinstance(sampler, dict) or len(sampler) != 1 or next(iter(sampler)) not in SAMPLERS:
                raise BenchError(
                    f"search_space.{key} must be one mapping {{sampler: args}}; valid samplers: {', '.join(SAMPLERS)}"
                )
        if self.selection and self.search_space:
            raise BenchError(
                "selection and search_space cannot be combined: put the grid under selection.search_space.<method>"
            )
        if self.selection and self.validation_fraction <= 0:
            raise BenchError("selection scores on the validation split: set validation_fraction > 0 (got 0)")
        self.method_params = check_methods(self.methods, self.method_params, self.validation_fraction)
        check_plans(self.methods, self.method_params, self.adapter, self.train)
        if self.selection:
            check_selection(self.selection, self.methods, self.method_params)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def grid_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the ``grid_search`` entries (``[{}]`` when there are none)."""
        grid = dict(sorted((k, v["grid_search"]) for k, v in self.search_space.items() if "grid_search" in v))
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]

    def random_space(self) -> dict[str, dict[str, Any]]:
        """Search-space entries Ray Tune samples (everything but ``grid_search``)."""
        return {k: v for k, v in self.search_space.items() if "grid_search" not in v}

    def expand(self) -> list[TrialSpec]:
        """One :class:`TrialSpec` per method × task × grid point × seed, in a stable order."""
        shared = {"model": self.model, **{name: getattr(self, name) for name in PER_TRIAL}}
        specs = []
        for method, task, point, seed in itertools.product(self.methods, self.tasks, self.grid_points(), self.seeds):
            adapter, train = dataclasses.asdict(self.adapter), {**dataclasses.asdict(self.train), "seed": seed}
            params = dict(self.method_params.get(method, {}))
            spec = TrialSpec(
                method=method, task=task, seed=seed, adapter=adapter, train=train, method_params=params, **shared
            )
            specs.append(spec.with_overrides(point) if point else spec)
        return specs


def valid_keys(parent: str) -> list[str]:
    """The keys an unknown key under ``parent`` (``""``: top level, ``train``, ``adapter``) could be."""
    fields = dataclasses.fields(NESTED.get(parent, ExperimentConfig))
    return [f"{parent}.{f.name}" if parent in NESTED else f.name for f in fields]


# -- loading -------------------------------------------------------------------------------------
def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-3)``: nested assignment used by ``--set`` and flags."""
    parts = key.split(".")
    parts[0] = ALIASES.get(parts[0], parts[0])
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any], source: str | Callable[[str], str] = "config") -> ExperimentConfig:
    """Validate a raw mapping (YAML + overrides) into an :class:`ExperimentConfig`; ``source`` names
    where a bad value came from (or maps its dotted key to that)."""
    try:
        return ExperimentConfig(**{ALIASES.get(k, k): v for k, v in data.items()})
    except ValidationError as err:
        raise one_line(err, source, valid_keys=valid_keys) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """YAML file (optional) + dotted overrides (CLI flags and ``--set``; these win)."""
    data = {ALIASES.get(k, k): v for k, v in (read_yaml(path) if path else {}).items()}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    given = {ALIASES.get(k, k) for k in overrides or {}}

    def source(key: str) -> str:
        flagged = any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in given)
        return "the command line" if flagged or not path else str(path)

    return config_from_dict(data, source)


def default_config_path() -> Path:
    """``configs/quickstart.yaml`` under the working directory, else the copy shipped in the package."""
    local = Path.cwd() / "configs" / "quickstart.yaml"
    return local if local.is_file() else Path(__file__).parent / "configs" / "quickstart.yaml"
