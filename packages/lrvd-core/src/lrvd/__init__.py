"""lrvd — Low-Rank Variational Dropout (BayesLoRA) and the contracts of the comparison suite.

Public surface: the ``AdapterMethod`` protocol and registry, the shared training loop, the
calibration metrics, and (in :mod:`lrvd.layers`, :mod:`lrvd.kl`, :mod:`lrvd.pruning`) the LRVD
layer, its KL to the log-uniform prior and rank selection.
"""

from lrvd.classifier import ClassifierModel
from lrvd.errors import LRVDError
from lrvd.protocol import AdapterMethod, AdapterSpec, MethodBase, TrainConfig, TrainPlan
from lrvd.registry import METHODS, get_method, list_methods

__all__ = [
    "AdapterMethod",
    "AdapterSpec",
    "ClassifierModel",
    "LRVDError",
    "METHODS",
    "MethodBase",
    "TrainConfig",
    "TrainPlan",
    "get_method",
    "list_methods",
]
