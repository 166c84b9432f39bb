"""lrvd — Low-Rank Variational Dropout (BayesLoRA) and the contracts of the comparison suite.

Public surface: the ``AdapterMethod`` protocol and registry, the shared training loop, the
calibration metrics, and (in :mod:`lrvd.layers`, :mod:`lrvd.kl`, :mod:`lrvd.pruning`) the LRVD
layer, its KL to the log-uniform prior and rank selection.

On any Hugging Face model (:mod:`lrvd.hf`): ``get_bayeslora_model`` (like ``peft.get_peft_model``),
``kl_loss`` and ``bayeslora_step`` (the loss term and the pruning step hook), ``predict_proba``
(posterior predictive from the model's own outputs), ``BayesLoraModel.from_pretrained`` (reload a
saved adapter) and ``BayesLoraTrainer`` (a ``transformers.Trainer``). Every name imports its module
on first use.
"""

# name -> the module that defines it; imported on first access (PEP 562) so that ``lrvd.errors`` and
# ``lrvd.registry`` load without torch: ``bench --help`` and ``bench list-methods`` stay fast.
_LAZY = {
    "ClassifierModel": "lrvd.classifier",
    "LRVDError": "lrvd.errors",
    "BayesLoraConfig": "lrvd.hf",
    "BayesLoraModel": "lrvd.hf",
    "bayeslora_step": "lrvd.hf",
    "get_bayeslora_model": "lrvd.hf",
    "kl_loss": "lrvd.hf",
    "predict_proba": "lrvd.hf",
    "inject_lrvd": "lrvd.inject",
    "lrvd_modules": "lrvd.inject",
    "mc_predict_proba": "lrvd.inject",
    "sampling": "lrvd.inject",
    "kl_log_uniform": "lrvd.kl",
    "total_kl": "lrvd.layers",
    "LRVDLinear": "lrvd.layers",
    "AdapterConfig": "lrvd.protocol",
    "AdapterMethod": "lrvd.protocol",
    "MethodBase": "lrvd.protocol",
    "TrainConfig": "lrvd.protocol",
    "TrainPlan": "lrvd.protocol",
    "effective_rank": "lrvd.pruning",
    "fix_gauge": "lrvd.pruning",
    "prune_ranks": "lrvd.pruning",
    "rank_report": "lrvd.pruning",
    "rank_statistics": "lrvd.pruning",
    "METHODS": "lrvd.registry",
    "get_method": "lrvd.registry",
    "list_methods": "lrvd.registry",
    "BayesLoraTrainer": "lrvd.hf_trainer",
    "BayesLoraCallback": "lrvd.hf_trainer",
}

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
    """The public names import their module on first use (torch, transformers' Trainer …);
    ``lrvd.AdapterSpec`` is the deprecated alias of :class:`AdapterConfig` (its old name, kept for one release)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "AdapterSpec":
        from lrvd.protocol import deprecated_alias

        return deprecated_alias(name)
    raise AttributeError(f"module 'lrvd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
