"""Pre-flight checks: everything that can be wrong with a sweep's input, found in the driver before Ray
starts, so a bad value is one line and exit code 2 instead of N failed trials."""

from __future__ import annotations

from pathlib import Path

from lrvd_bench.config import ExperimentConfig
from lrvd_bench.errors import BenchError


def preflight(config: ExperimentConfig) -> None:
    """Every method (and each selection grid value of its own hyper-parameters) builds, and the data
    and backbone are reachable from here."""
    check_methods(config)
    if config.selection:
        from lrvd_bench import selection

        selection.check_methods(config.selection, config.method_params)
    check_inputs(config)


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
