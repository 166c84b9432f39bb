"""Pre-flight checks: everything that can be wrong with a sweep's input, found in the driver before Ray
starts, so a bad value is one line and exit code 2 instead of N failed trials."""

from __future__ import annotations

from pathlib import Path

from lrvd_bench.config import ExperimentConfig
from lrvd_bench.errors import BenchError
from lrvd_bench.targets import architecture_targets, is_by_architecture


def preflight(config: ExperimentConfig) -> None:
    """Every method (and each selection grid value of its own hyper-parameters) builds, the data and
    backbone are reachable from here, and the adapter targets exist in the backbone."""
    check_methods(config)
    if config.selection:
        from lrvd_bench import selection

        selection.check_methods(config.selection, config.method_params)
    check_inputs(config)
    check_target_modules(config)


def check_target_modules(config: ExperimentConfig) -> None:
    """``adapter.target_modules``: ``auto`` becomes the backbone's default list, so every trial records
    concrete names; a list that matches no linear module of the backbone is refused (exit 2)."""
    config.adapter.target_modules = resolve_targets(config.adapter.target_modules, config.model, config.tasks)


def absolute_paths(config: ExperimentConfig) -> None:
    """Trials run in their own working directory (and maybe on another node): make paths absolute."""
    if config.data_dir:
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    model = Path(config.model).expanduser()
    if model.exists():
        config.model = str(model.resolve())


def check_methods(config: ExperimentConfig) -> None:
    """Build each method once in the driver so a bad hyper-parameter fails before any trial starts."""
    from lrvd.registry import get_method

    for name in config.methods:
        try:
            cls = get_method(name)
        except ImportError as err:  # a registered entry point whose module is missing or broken
            raise BenchError(
                f"method {name!r} is registered but cannot be imported: {type(err).__name__}: {err}"
            ) from None
        cls(**config.method_params.get(name, {}))


def check_inputs(config: ExperimentConfig) -> None:
    """Data and backbone reachable from here, before any trial: a missing data directory, an
    unreachable hub dataset or model (offline) is a one-line error instead of N failed trials."""
    from lrvd_bench.tasks import get_task

    for name in config.tasks:
        task = get_task(name)
        source = task.resolve_source(config.data_dir)  # a missing data dir / file raises LRVDError
        if source.kind == "hub":
            task.load("train", config.data_dir)  # from the datasets cache, or a one-line "offline" error
    model = config.model
    if model in ("minilm", "smollm2-135m") or Path(model).expanduser().exists():
        return
    if model.startswith(("/", ".", "~")):
        raise BenchError(f"model path {model} does not exist")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(model, "config.json")
    except Exception as err:  # noqa: BLE001 - any hub/network/cache failure becomes one line
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BenchError(
            f"model {model!r} is not a local directory and cannot be fetched from the Hugging Face "
            f"hub ({type(err).__name__}: {reason}); offline: pass a downloaded model directory"
        ) from None


def skeleton_modules(model: str, task_name: str) -> tuple[str, list[str]]:
    """``(model_type, full module names of the linear layers)`` of ``model`` as ``task_name`` loads it,
    built from the config on the meta device: no weights are read, nothing is allocated."""
    import torch
    from torch import nn

    from lrvd.layers import is_conv1d
    from lrvd_bench.backbones import backbone_kind, load_model_config, model_class
    from lrvd_bench.tasks import get_task

    task = get_task(task_name)
    config, _, extra = load_model_config(model)
    cls, kwargs = model_class(backbone_kind(config, task, gguf="gguf_file" in extra), task)
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        skeleton = cls.from_config(config)
    names = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    return str(getattr(config, "model_type", "")), names


def resolve_targets(targets: list[str], model: str, tasks: list[str]) -> list[str]:
    """The concrete target list of ``model``: ``auto`` replaced by the architecture's list, checked.

    Raises a one-line :class:`BenchError` naming the model's linear modules when the list matches
    none of them (per task: the task decides the head, e.g. a multiple-choice or a sequence
    classifier) or when ``auto`` meets a model type peft has no default for.
    """
    from lrvd.inject import matches_target

    for task in tasks:
        model_type, linear = skeleton_modules(model, task)
        suffixes = ", ".join(dict.fromkeys(n.rpartition(".")[2] for n in linear)) or "none"
        if is_by_architecture(targets):
            default = architecture_targets(model_type)
            if default is None:
                raise BenchError(
                    f"adapter.target_modules auto: peft has no default for model type {model_type!r}; "
                    f"set --target-modules to some of its linear modules: {suffixes}"
                )
            targets = default
        if not any(matches_target(name, targets) for name in linear):
            raise BenchError(
                f"adapter.target_modules {','.join(targets)} matches no linear module of {model!r}; "
                f"its linear modules: {suffixes}"
            )
    return list(targets)
