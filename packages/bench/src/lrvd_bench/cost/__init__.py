"""``bench cost``: the compute cost of every registered method on one backbone and batch shape.

Modules, in the order a measurement uses them (imports point one way, down this list; none imports
torch at module level, so ``bench --help`` stays fast):

* :mod:`~lrvd_bench.cost.stats` — median/IQR, ratios to LoRA, epoch units (pure arithmetic);
* :mod:`~lrvd_bench.cost.harness` — :class:`CostConfig`, the inputs, one method on its own copy of the
  backbone, one training step (:func:`lrvd.training.train_step`, the step ``fit`` runs);
* :mod:`~lrvd_bench.cost.measure` — the interleaved per-step table: step time, peak memory,
  after_training, prediction time and memory;
* :mod:`~lrvd_bench.cost.whole_run` — ``--whole-run``: whole training runs against LoRA's;
* :mod:`~lrvd_bench.cost.layer_ops` — ``--layers``: single adapted layers against the authors'
  formulation of each op (re-derived and tested equal to the suite's layers);
* :mod:`~lrvd_bench.cost.ray_overhead` — ``--ray-overhead``: a finished sweep against its trials;
* :mod:`~lrvd_bench.cost.report` — columns, Markdown/CSV, the cost targets;
* :mod:`~lrvd_bench.cost.cli` — flags and ``main``.
"""

from lrvd_bench.cost.harness import CostConfig
from lrvd_bench.cost.layer_ops import LAYER_COLUMNS, LayerCostConfig, measure_layers
from lrvd_bench.cost.measure import measure
from lrvd_bench.cost.ray_overhead import ray_overhead, ray_overhead_from_run
from lrvd_bench.cost.report import COLUMNS, WHOLE_RUN_COLUMNS, targets, targets_markdown, to_markdown, write_rows
from lrvd_bench.cost.stats import REFERENCE, add_ratios, epoch_units, median_iqr, ratio, steps_per_epoch
from lrvd_bench.cost.whole_run import measure_whole_run

__all__ = [
    "COLUMNS",
    "LAYER_COLUMNS",
    "REFERENCE",
    "WHOLE_RUN_COLUMNS",
    "CostConfig",
    "LayerCostConfig",
    "add_ratios",
    "epoch_units",
    "measure",
    "measure_whole_run",
    "measure_layers",
    "median_iqr",
    "ratio",
    "ray_overhead",
    "ray_overhead_from_run",
    "steps_per_epoch",
    "targets",
    "targets_markdown",
    "to_markdown",
    "write_rows",
]
