"""Pre-flight checks: what a sweep needs from the world outside its config, found in the driver before Ray
starts, so a bad value is one line and exit code 2 instead of N failed trials. ``bench run --dry-run``
runs the same checks."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from lrvd.errors import first_line
from lrvd_bench.config import ExperimentConfig
from lrvd_bench.errors import BenchError
from lrvd_bench.targets import architecture_targets, is_by_architecture


def preflight(config: ExperimentConfig, run_dir: Path) -> None:
    """The run folder can be written, the data and backbone are reachable from here, and the adapter
    targets exist in the backbone (the config itself, each method's hyper-parameters included, was
    validated when it was built)."""
    check_output_dir(run_dir)
    check_inputs(config)
    check_target_modules(config)


def check_target_modules(config: ExperimentConfig) -> None:
    """``adapter.target_modules``: ``auto`` becomes the backbone's default list, so every trial records
    concrete names; a list that matches no linear module of the backbone is refused (exit 2)."""
    config.adapter.target_modules = resolve_targets(config.adapter.target_modules, config.model, config.tasks)


def default_run_dir(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir_of(config: ExperimentConfig, config_path: str | Path | None) -> Path:
    """The run folder: ``output`` as given, else ``runs/<config name>-<timestamp>``, absolute."""
    return (Path(config.output) if config.output else default_run_dir(config_path)).expanduser().resolve()


#: Free space (MB) the run folder's filesystem must have before trials start. The CPU reference run's folder
#: holds ~95 MB (59 trials' adapters, predictions and logs); larger backbones' adapters and training
#: checkpoints need more, so this is a floor that catches a full disk, not an estimate.
MIN_FREE_MB = 512


def check_output_dir(run_dir: Path) -> None:
    """The run folder is a folder we may write: not an existing file, under a writable directory, on a
    filesystem with at least :data:`MIN_FREE_MB` free."""
    if run_dir.exists() and not run_dir.is_dir():
        raise BenchError(f"output {run_dir} exists and is not a directory; choose another --output")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise BenchError(f"output {run_dir} cannot be created: {existing} is a file; choose another --output")
    try:  # a probe, not os.access: a read-only mount refuses root too
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise BenchError(
            f"output {run_dir} cannot be written: {existing} is read-only ({err.strerror}); choose another --output"
        ) from None
    check_free_space(run_dir)


def check_free_space(run_dir: Path) -> None:
    """A new or resumed sweep starts only with :data:`MIN_FREE_MB` free where its folder is (or will be)."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free_mb = shutil.disk_usage(existing).free / 2**20
    if free_mb < MIN_FREE_MB:
        raise BenchError(
            f"output {run_dir}: only {free_mb:.0f} MB free on its filesystem, below the {MIN_FREE_MB} MB a sweep "
            "needs (adapters, predictions, checkpoints); free space or choose another --output"
        )


def absolute_paths(config: ExperimentConfig) -> None:
    """Trials run in their own working directory (and maybe on another node): make paths absolute."""
    if config.data_dir:
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    model = Path(config.model).expanduser()
    if model.exists():
        config.model = str(model.resolve())


def check_inputs(config: ExperimentConfig) -> None:
    """Data and backbone reachable from here, before any trial: a missing data directory, an
    unreachable hub dataset or model (offline) is a one-line error instead of N failed trials."""
    from lrvd_bench.tasks import get_task

    for name in config.tasks:
        task = get_task(name)
        source = task.resolve_source(config.data_dir)  # a missing data dir / file raises LRVDError
        if source.kind == "hub":
            task.load("train", config.data_dir)  # from the datasets cache, or a one-line "offline" error
    for name in config.eval_tasks or []:  # only their evaluation split is read
        task = get_task(name)
        source = task.resolve_source(config.data_dir)
        if source.kind == "hub":
            task.load("eval", config.data_dir)
    model = config.model
    if model in ("minilm", "smollm2-135m") or Path(model).expanduser().exists():
        return
    if model.startswith(("/", ".", "~")):
        raise BenchError(f"model path {model} does not exist")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(model, "config.json")
    except Exception as err:  # noqa: BLE001 - any hub/network/cache failure becomes one line
        raise BenchError(
            f"model {model!r} is not a local directory and cannot be fetched from the Hugging Face "
            f"hub ({type(err).__name__}: {first_line(err, 160)}); offline: pass a downloaded model directory"
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
