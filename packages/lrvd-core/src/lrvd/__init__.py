"""lrvd — Low-Rank Variational Dropout (BayesLoRA) and the contracts of the comparison suite.

Public surface: the ``AdapterMethod`` protocol and registry, the shared training loop, the
calibration metrics, and (in :mod:`lrvd.layers`, :mod:`lrvd.kl`, :mod:`lrvd.pruning`) the LRVD
layer, its KL to the log-uniform prior and rank selection.
"""

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.inject import inject_lrvd, lrvd_modules, mc_predict_proba, sampling
from lrvd.kl import kl_log_uniform, total_kl
from lrvd.layers import LRVDLinear
from lrvd.protocol import AdapterMethod, AdapterSpec, MethodBase, TrainConfig, TrainPlan
from lrvd.pruning import effective_rank, fix_gauge, prune_ranks, rank_report, rank_statistics
from lrvd.registry import METHODS, get_method, list_methods

__all__ = [
    "AdapterMethod",
    "AdapterSpec",
    "ClassifierModel",
    "LRVDError",
    "LRVDLinear",
    "METHODS",
    "MethodBase",
    "TrainConfig",
    "TrainPlan",
    "effective_rank",
    "fix_gauge",
    "get_method",
    "inject_lrvd",
    "kl_log_uniform",
    "list_methods",
    "lrvd_modules",
    "mc_predict_proba",
    "prune_ranks",
    "rank_report",
    "rank_statistics",
    "sampling",
    "total_kl",
]
