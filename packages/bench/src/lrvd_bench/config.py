"""``ExperimentConfig``: the one validated description of a sweep, and its expansion into trials.

Pydantic validates every value once, before anything starts: :class:`ExperimentConfig` is a pydantic
dataclass whose annotations own types, ranges and unknown keys, down into the core's
``AdapterConfig``/``TrainConfig`` (stdlib dataclasses, typed field by field, then checked by their own
``__post_init__``). What stays here is what only the suite knows: registered method and task names,
cross-key rules, search spaces, and each method's ``Params`` (:mod:`lrvd_bench.method_checks`); every
failure is one line built from the library's ``ValidationError`` (:func:`lrvd_bench.errors.one_line`)::

    raw YAML  ─┐
    --set k=v ─┼─> load_config() ─> ExperimentConfig ─> expand() -> [TrialSpec]
    --flags   ─┘                                        method × task × grid point × seed

``grid_search`` points are expanded here; other search spaces are sampled by Ray Tune and applied in
the trial with :meth:`TrialSpec.with_overrides`. The flags of ``bench run`` are derived from the
fields (:mod:`lrvd_bench.run_flags`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator
from pydantic.dataclasses import dataclass as validated_dataclass

from lrvd.protocol import AdapterConfig, TrainConfig
from lrvd_bench.errors import BenchError, one_line, unknown_choice
from lrvd_bench.method_checks import (
    check_method_params,
    check_selection,
    method_class,
    registered_methods,
    usable_methods,
)
from lrvd_bench.targets import BY_ARCHITECTURE
from lrvd_bench.trial_spec import (  # noqa: F401 - re-exported: the spec is part of the config's public face
    DEFAULT_VALIDATION_FRACTION,
    NESTED,
    PER_TRIAL,
    SWEEP_WIDE,
    Count,
    TrialSettings,
    TrialSpec,
    check_search_key,
    portable_model_name,
    setting,
)
from lrvd_bench.yaml_files import YAML12Loader, parse_set, read_yaml  # noqa: F401 - re-exported

#: Experiment trackers ``loggers:`` accepts (Ray Tune logger callbacks; see lrvd_bench.sweep.trackers).
LOGGERS = ("csv", "json", "tensorboard", "mlflow", "wandb")
#: The method the leaderboard's paired differences compare every other method with.
DEFAULT_REFERENCE = "lora"
#: Search-space samplers accepted in YAML (``{"train.lr": {"loguniform": [1e-4, 1e-2]}}``).
SAMPLERS = ("grid_search", "choice", "uniform", "loguniform", "quniform", "qloguniform", "randint", "lograndint")
ALIASES = {"task": "tasks", "method": "methods", "seed": "seeds"}


def as_list(value: Any) -> Any:
    """``"a, b"`` (a flag or ``--set``) -> ``["a", "b"]``; a lone scalar -> ``[scalar]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value if isinstance(value, (list, tuple)) else [value]


def methods_list(value: Any) -> Any:
    return usable_methods() if value in ("all", ["all"]) else as_list(value)


def keep_ints(value: Any, handler: Any) -> Any:
    """Validate a core dataclass, keeping an int written for a float field (``alpha: 16``) as written,
    so spec hashes, and with them the trial ids of existing runs, stay what they were."""
    typed = handler({} if value is None else value)
    ints = {k: v for k, v in (value if isinstance(value, dict) else {}).items() if type(v) is int}
    return dataclasses.replace(typed, **{k: v for k, v in ints.items() if getattr(typed, k) == v})


Names = Annotated[list[str], BeforeValidator(as_list)]
Mapping = Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value)]
Core = WrapValidator(keep_ints)


def by_architecture(value: Any) -> Any:
    """``adapter`` without ``target_modules`` targets the backbone's default modules (``auto``); a
    comma-separated string (``auto``, ``query,value``) is the list it names."""
    if not isinstance(value, dict | None):
        return value
    value = {"target_modules": [BY_ARCHITECTURE], **(value or {})}
    return {**value, "target_modules": as_list(value["target_modules"])}


@validated_dataclass(config=ConfigDict(extra="forbid", validate_default=True))
class ExperimentConfig(TrialSettings):
    """A sweep: methods × tasks × seeds (× search-space points) on one backbone.

    ``adapter`` and ``train`` are shared by every method so the comparison is fair; ``method_params``
    holds each method's own hyper-parameters (its ``Params`` dataclass). The per-trial settings come
    from :class:`~lrvd_bench.trial_spec.TrialSettings`.
    """

    methods: Annotated[list[str], BeforeValidator(methods_list)] = setting(
        "all", "comma-separated method names, or all"
    )
    tasks: Names = setting(lambda: ["arc-e"], "comma-separated task names")
    model: str = setting("minilm", "backbone alias (minilm, smollm2-135m), HF id or local dir")
    seeds: Annotated[list[int], BeforeValidator(as_list), Field(min_length=1)] = setting(
        lambda: [0], "comma-separated seeds, e.g. 0,1,2"
    )
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
        from lrvd_bench.tasks import list_tasks

        valid = registered_methods()
        for kind, names, choices in (
            ("method", self.methods, valid),
            ("task", self.tasks, list(list_tasks())),
            ("method in method_params:", self.method_params, valid),
            ("logger", self.loggers, LOGGERS),
        ):
            if not names and kind in ("method", "task"):
                raise BenchError(f"no {kind}s selected; valid choices: " + ", ".join(choices))
            for name in names:
                if name not in choices:
                    raise unknown_choice(kind, name, choices)
        if self.reference not in valid:
            raise unknown_choice("reference method", self.reference, valid)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise unknown_choice("device", self.device, ["auto", "cpu", "cuda", "cuda:N"])
        if self.load_in_8bit and self.device == "cpu":
            raise BenchError(
                "load_in_8bit needs a CUDA device (bitsandbytes int8 kernels); set device: cuda or load_in_8bit: false"
            )
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
        # every selected method is built once here, so a bad or a broken one fails before anything starts
        typed = {name: check_method_params(name, self.method_params.get(name, {})) for name in self.methods}
        self.method_params = {
            name: typed[name] if name in typed else check_method_params(name, raw)
            for name, raw in self.method_params.items()
        }
        if self.selection:
            check_selection(self.selection, self.methods, self.method_params, check_search_key)
        for name in self.methods if self.validation_fraction == 0.0 else []:
            if method_class(name)(**self.method_params.get(name, {})).needs_validation:
                raise BenchError(
                    f"method {name!r} fits on the validation split; set validation_fraction > 0 (got 0) "
                    "or drop the method"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def grid_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the ``grid_search`` entries (``[{}]`` when there are none)."""
        grid = {k: v["grid_search"] for k, v in self.search_space.items() if "grid_search" in v}
        keys = sorted(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]

    def random_space(self) -> dict[str, dict[str, Any]]:
        """Search-space entries Ray Tune samples (everything but ``grid_search``)."""
        return {k: v for k, v in self.search_space.items() if "grid_search" not in v}

    def expand(self) -> list[TrialSpec]:
        """One :class:`TrialSpec` per method × task × grid point × seed, in a stable order."""
        specs = []
        for method, task, point, seed in itertools.product(self.methods, self.tasks, self.grid_points(), self.seeds):
            spec = TrialSpec(
                method=method,
                task=task,
                model=self.model,
                seed=seed,
                adapter=dataclasses.asdict(self.adapter),
                train={**dataclasses.asdict(self.train), "seed": seed},
                method_params=dict(self.method_params.get(method, {})),
                **{name: getattr(self, name) for name in PER_TRIAL},
            )
            specs.append(spec.with_overrides(point) if point else spec)
        return specs


TOP_KEYS = [f.name for f in dataclasses.fields(ExperimentConfig)]


def available_methods() -> list[str]:
    return registered_methods()


def valid_keys(parent: str) -> list[str]:
    """The keys an unknown key under ``parent`` (``""``: top level, ``train``, ``adapter``) could be."""
    return [f"{parent}.{f.name}" for f in dataclasses.fields(NESTED[parent])] if parent in NESTED else TOP_KEYS


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
