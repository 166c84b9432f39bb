"""The final stage's plan: which trials Ray runs first, which run after them on their adapters, and
which are built after the sweep from other trials' files.

One function decides it for a fresh run, ``--resume`` and ``--dry-run``, so all three show the same
stages:

1. the training stage: every final spec except those below;
2. the post-hoc stage: temperature scaling and Laplace-LoRA trials that load the adapter of the LoRA
   trial with the same training spec (:mod:`lrvd_bench.posthoc_reuse`), run once that trial ended;
3. after the sweep: ensembles made of LoRA trials (:mod:`lrvd_bench.ensembles`), never sent to Ray.

With a random search space no two trials share a sampled configuration, so nothing is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrvd_bench.config import ExperimentConfig, TrialSpec
from lrvd_bench.ensembles import plan_reuse
from lrvd_bench.posthoc_reuse import plan_posthoc


@dataclass
class FinalPlan:
    specs: list[TrialSpec]  # every final spec, as listed in specs.json
    ensembles: dict[str, list[str]] = field(default_factory=dict)  # ensemble id: member LoRA ids
    posthoc: dict[str, str] = field(default_factory=dict)  # post-hoc id: the LoRA id it reuses

    @property
    def stages(self) -> list[tuple[str, list[TrialSpec]]]:
        """(name, specs) of the Tune stages in order; the post-hoc stage only when it has trials."""
        training = [s for s in self.specs if s.trial_id not in self.ensembles and s.trial_id not in self.posthoc]
        later = [s for s in self.specs if s.trial_id in self.posthoc]
        return [("training", training)] + ([("post-hoc", later)] if later else [])

    def role(self, spec: TrialSpec) -> str:
        """How ``spec`` gets its result, for ``--dry-run``."""
        if spec.trial_id not in {s.trial_id for s in self.specs}:
            return "not run: the same ensemble members as an earlier seed"
        if spec.trial_id in self.ensembles:
            return "after the sweep, from " + ", ".join(self.ensembles[spec.trial_id])
        if spec.trial_id in self.posthoc:
            return f"post-hoc stage, on the adapter of {self.posthoc[spec.trial_id]}"
        return "training stage"


def plan_final(config: ExperimentConfig, specs: list[TrialSpec]) -> FinalPlan:
    """The plan of the final stage over ``specs`` (the expanded or selection-chosen final specs)."""
    if config.random_space():  # sampled points differ per trial: no two trials share a config
        return FinalPlan(list(specs))
    kept, ensembles = plan_reuse(specs)
    return FinalPlan(kept, ensembles, plan_posthoc(kept))
