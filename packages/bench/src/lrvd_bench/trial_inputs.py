"""What every trial builds before its method attaches: task, backbone, adapter, loaders, step plan.

One sequence for the trial itself (:mod:`lrvd_bench.trial`), for rebuilding a finished trial from
its folder (:mod:`lrvd_bench.reload`) and for the measurement tools, so that all of them seed, resolve
``target_modules: auto`` and size the schedule the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class TrialInputs:
    task: Any
    backbone: Any
    #: the spec's adapter with ``target_modules: auto`` resolved for this backbone
    adapter: Any
    #: :class:`lrvd_bench.loaders.TaskData`
    data: Any
    #: :class:`lrvd.protocol.TrainPlan` from the training loader's length
    plan: Any


def trial_inputs(
    spec: Any,
    *,
    with_eval: bool = True,
    load_in_8bit: bool = False,
    phase: Callable[[str], None] = lambda name: None,
) -> TrialInputs:
    """Seed with the trial's seed, then load ``spec``'s task, backbone and loaders (``with_eval``:
    also the evaluation split); ``phase(name)`` is called as each slow step starts (the trial's log)."""
    from lrvd.protocol import TrainPlan
    from lrvd.training import seed_everything
    from lrvd_bench.backbones import concrete_targets, load_backbone
    from lrvd_bench.loaders import loaders_for_trial
    from lrvd_bench.tasks import get_task

    seed_everything(spec.seed)
    phase("load task")
    task = get_task(spec.task)
    phase("load backbone")
    backbone = load_backbone(spec.model, task, load_in_8bit=load_in_8bit)
    adapter = concrete_targets(spec.build_adapter(), backbone)
    data = loaders_for_trial(task, backbone, spec, with_eval=with_eval)
    plan = TrainPlan.from_loader_length(len(data.train_loader), data.n_train, spec.build_train())
    return TrialInputs(task, backbone, adapter, data, plan)
