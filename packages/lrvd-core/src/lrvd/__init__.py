"""lrvd — Low-Rank Variational Dropout (BayesLoRA) and the contracts of the comparison suite.

Public surface: the ``AdapterMethod`` protocol and registry, the shared training loop, the
calibration metrics, and (in :mod:`lrvd.layers`, :mod:`lrvd.kl`, :mod:`lrvd.pruning`) the LRVD
layer, its KL to the log-uniform prior and rank selection.

On any Hugging Face model (:mod:`lrvd.hf`): ``get_bayeslora_model`` (like ``peft.get_peft_model``),
``kl_loss`` and ``bayeslora_step`` (the loss term and the pruning step hook), ``predict_proba``
(posterior predictive from the model's own outputs), ``BayesLoraModel.from_pretrained`` (reload a
saved adapter) and ``BayesLoraTrainer`` (a ``transformers.Trainer``; imported on first use).
"""

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.hf import BayesLoraConfig, BayesLoraModel, bayeslora_step, get_bayeslora_model, kl_loss, predict_proba
from lrvd.inject import inject_lrvd, lrvd_modules, mc_predict_proba, sampling
from lrvd.kl import kl_log_uniform, total_kl
from lrvd.layers import LRVDLinear
from lrvd.protocol import AdapterConfig, AdapterMethod, MethodBase, TrainConfig, TrainPlan
from lrvd.pruning import effective_rank, fix_gauge, prune_ranks, rank_report, rank_statistics
from lrvd.registry import METHODS, get_method, list_methods

__all__ = [
    "AdapterConfig",
    "AdapterMethod",
    "BayesLoraCallback",
    "BayesLoraConfig",
    "BayesLoraModel",
    "BayesLoraTrainer",
    "ClassifierModel",
    "LRVDError",
    "LRVDLinear",
    "METHODS",
    "MethodBase",
    "TrainConfig",
    "TrainPlan",
    "bayeslora_step",
    "effective_rank",
    "fix_gauge",
    "get_bayeslora_model",
    "get_method",
    "inject_lrvd",
    "kl_log_uniform",
    "kl_loss",
    "list_methods",
    "lrvd_modules",
    "mc_predict_proba",
    "predict_proba",
    "prune_ranks",
    "rank_report",
    "rank_statistics",
    "sampling",
    "total_kl",
]


def __getattr__(name: str):
    """``lrvd.BayesLoraTrainer`` / ``lrvd.BayesLoraCallback`` import transformers' Trainer on first use;
    ``lrvd.AdapterSpec`` is the deprecated alias of :class:`AdapterConfig` (its old name, kept for one release)."""
    if name in ("BayesLoraTrainer", "BayesLoraCallback"):
        from lrvd import hf_trainer

        return getattr(hf_trainer, name)
    if name == "AdapterSpec":
        from lrvd.protocol import deprecated_alias

        return deprecated_alias(name)
    raise AttributeError(f"module 'lrvd' has no attribute {name!r}")
