"""BayesLoRA: LoRA with Low-Rank Variational Dropout (Doyle et al., arXiv 2506.22809).

Each adapted module becomes an :class:`~lrvd.layers.LRVDLinear` (rank-wise Gaussian posterior over
the LoRA factors, one log σ² per rank); training maximises a scaled ELBO, ranks whose noise-to-signal
ratio exceeds τ are pruned, and prediction averages softmax over adapter-only posterior samples.

Objective (per optimizer step, with per-example mean cross-entropy)::

    loss = CE + β(step) · kl_scale · Σ_modules KL(q ‖ log-uniform)

The exact minibatch ELBO divided by the training-set size N is CE + KL/N, i.e. kl_scale = 1/N.
Like the authors (kl_scale = 1e-6 in ``apply_bayeslora`` and the GLUE bench) we expose kl_scale as a
free per-dataset weight instead: with N ≈ 10⁴ and a log-uniform prior on ~10⁵–10⁷ factor entries,
1/N lets the KL dominate and collapses ranks before the data has spoken. β(step) is 0 for the first
``kl_warmup`` fraction of steps and then ramps linearly to 1 over ``kl_ramp`` (the authors'
VLORASchedule; the GLUE bench uses no anneal, our default).

Two protocols of the authors' code, chosen by name with ``protocol`` (docs/methods.md, BayesLoRA):

- ``llm-scripts`` (default; ``bayeslora_llama.py`` / ``bayeslora_gpt.py``): sample the adapter from
  step 0 with the local reparameterisation trick, and predict with an MC average of softmax over
  ``n_samples`` draws that also use the local reparameterisation (as the authors' layer does
  whenever sampling is on).
- ``glue-bench`` (``run_glue_bench.py`` / ``glue_helpers.py``): never sample; train the posterior
  means (σ moves only through the KL) and predict with the mean model.

``sample_warmup``, ``local_reparam``, ``n_samples`` and ``prune_every`` left at ``None`` take the
protocol's value. Both protocols prune during training ("prune-as-you-go", every 200 / 2000 steps).
Both protocols decay neither the adapter means nor the log-variances; only the head's weight
matrices get ``weight_decay`` (the GLUE bench's ``build_param_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lrvd import pruning
from lrvd.classifier import ClassifierModel, count_parameters, freeze_all_but
from lrvd.errors import LRVDError, unknown_choice
from lrvd.inject import inject_lrvd, lrvd_modules, mc_predict_proba, set_sampling
from lrvd.layers import VARIANTS, total_kl
from lrvd.protocol import AdapterConfig, MethodBase, TrainPlan, head_groups

#: The authors' two protocols: what ``sample_warmup``, ``local_reparam``, ``n_samples`` and ``prune_every``
#: default to.
PROTOCOLS: dict[str, dict[str, float | int | bool]] = {
    # bayeslora_llama.py / bayeslora_gpt.py: set_bayeslora_sampling(model, True) every step from step
    # 0, apply_bayeslora(local_reparam=True), MC evaluation with sampling (and so LRT) on. The scripts
    # use mc_eval = 5; 10 is the suite's M for every sampled predictive (BLoB, Laplace-LoRA use 10).
    "llm-scripts": {
        "sample_warmup": 0.0,
        "local_reparam": True,
        "n_samples": 10,
        # bayeslora_llama.py: --prune-every 200 from --prune-start-step 0 (argparse defaults;
        # bayeslora_gpt.py's README command passes the same 200): prune-as-you-go.
        "prune_every": 200,
    },
    # run_glue_bench.py / glue_helpers.py: sampling is never switched on (LRVDLinear._sample stays
    # False), evaluate_accuracy / evaluate_metrics run the mean model.
    "glue-bench": {
        "sample_warmup": 1.0,
        "local_reparam": False,
        "n_samples": 0,
        # run_glue_bench.py: --prune_every 2000 (argparse default), from the LR warm-up's end.
        "prune_every": 2000,
    },
}


@dataclass
class BayesLoRAParams:
    """Hyper-parameters; defaults are the authors' (mercury0100/bayeslora hf.py / GLUE bench)."""

    kl_scale: float = field(
        default=1e-6, metadata={"help": "weight of the summed KL (per-dataset ELBO scaling; 1/N is the exact ELBO)"}
    )
    kl_warmup: float = field(default=0.0, metadata={"help": "fraction of total steps with KL weight beta = 0"})
    kl_ramp: float = field(
        default=0.0, metadata={"help": "fraction of total steps of the linear beta ramp 0 -> 1 after kl_warmup"}
    )
    tau: float = field(
        default=3.0, metadata={"help": "rank log-alpha threshold: ranks with log alpha >= tau are off / pruned"}
    )
    prune_every: int | None = field(
        default=None,
        metadata={
            "help": "steps between physical rank pruning, 0: never (default: protocol's, llm-scripts 200,"
            " glue-bench 2000)"
        },
    )
    prune_start: float | None = field(
        default=None, metadata={"help": "fraction of total steps before the first prune (default: kl_warmup + kl_ramp)"}
    )
    min_ranks: int = field(default=0, metadata={"help": "ranks every module keeps when pruning"})
    protocol: str = field(
        default="llm-scripts",
        metadata={
            "help": "authors' protocol: llm-scripts (sample from step 0, local reparameterisation, MC "
            "predictive) | glue-bench (train and predict at the posterior mean)"
        },
    )
    n_samples: int | None = field(
        default=None,
        metadata={
            "help": "MC samples of the predictive, 0: posterior-mean model (default: protocol's, llm-"
            "scripts 10, glue-bench 0)"
        },
    )
    mc_chunk: int = field(
        default=0,
        metadata={
            "help": "MC samples per forward pass (0: chosen from mc_memory_budget; 1: loop; n_samples: all at once)"
        },
    )
    mc_memory_budget: float = field(
        default=0.1,
        metadata={
            "help": "with mc_chunk 0: extra peak memory the MC predictive may use, as a fraction of one "
            "deterministic pass"
        },
    )
    local_reparam: bool | None = field(
        default=None,
        metadata={
            "help": "local reparameterisation trick whenever sampling, training and prediction (factor "
            "variant; default: protocol's)"
        },
    )
    variant: str = field(
        default="factor",
        metadata={"help": "noise model: factor (additive noise on A, B) | gate (multiplicative rank gates)"},
    )
    init_log_sigma2: float = field(default=-8.0, metadata={"help": "initial per-rank log variance"})
    log_sigma2_lr_mult: float = field(
        default=0.1, metadata={"help": "learning-rate multiplier of the log variances (no weight decay)"}
    )
    sample_warmup: float | None = field(
        default=None,
        metadata={
            "help": "fraction of total steps trained at the posterior mean before sampling (default: "
            "protocol's, llm-scripts 0, glue-bench 1 = never)"
        },
    )
    gauge_fix: bool = field(
        default=False, metadata={"help": "balance ||A_k|| and ||B_k|| before each prune (fix_gauge)"}
    )

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise unknown_choice("BayesLoRA variant", self.variant, VARIANTS)
        if self.protocol not in PROTOCOLS:
            raise unknown_choice("BayesLoRA protocol", self.protocol, PROTOCOLS)
        for name, value in PROTOCOLS[self.protocol].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("kl_warmup", "kl_ramp", "sample_warmup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LRVDError(f"{name} is a fraction of training steps in [0, 1], got {getattr(self, name)}")
        if self.prune_start is not None and not 0.0 <= self.prune_start <= 1.0:
            raise LRVDError(f"prune_start is a fraction in [0, 1], got {self.prune_start}")
        for name in (
            "kl_scale",
            "prune_every",
            "min_ranks",
            "n_samples",
            "mc_chunk",
            "mc_memory_budget",
            "log_sigma2_lr_mult",
        ):
            if getattr(self, name) < 0:
                raise LRVDError(f"{name} must be >= 0, got {getattr(self, name)}")


class BayesLoRA(MethodBase):
    """LoRA with a rank-wise variational posterior (LRVD): KL-driven rank selection + MC predictive."""

    name = "bayeslora"
    description = (
        "BayesLoRA / Low-Rank Variational Dropout: rank-wise Gaussian LoRA posterior, ARD rank pruning, MC predictive"
    )
    Params = BayesLoRAParams
    adaptive_rank = sampled_predictive = posterior_params = per_rank_log_alpha = True

    def __init__(self, **hyper_params) -> None:
        super().__init__(**hyper_params)
        self.step = 0
        self.last_kl = 0.0
        self.log_alpha_history: list[dict] = []  # {"step", module: [log α_k]} at every rank_report

    # -- schedule ----------------------------------------------------------------------------------
    def _steps(self, fraction: float) -> int:
        total = self.plan.total_steps if self.plan is not None else 0
        return int(round(fraction * total))

    def kl_beta(self, step: int) -> float:
        """β(step): 0 during the KL warm-up, then linear to 1 over the ramp."""
        start, ramp = self._steps(self.params.kl_warmup), self._steps(self.params.kl_ramp)
        if step < start:
            return 0.0
        return 1.0 if ramp <= 0 else min(1.0, (step - start) / ramp)

    def prune_due(self, step: int) -> bool:
        p = self.params
        if p.prune_every <= 0 or step <= 0:
            return False
        start = self._steps(p.prune_start if p.prune_start is not None else min(1.0, p.kl_warmup + p.kl_ramp))
        return step >= start and (step - start) % p.prune_every == 0

    def _update_sampling(self, model: ClassifierModel, step: int) -> None:
        """Train at the posterior mean until ``sample_warmup``; then sample whenever training."""
        set_sampling(model, False if step < self._steps(self.params.sample_warmup) else None)

    # -- hooks -------------------------------------------------------------------------------------
    def attach(self, model: ClassifierModel, spec: AdapterConfig, plan: TrainPlan) -> ClassifierModel:
        self.spec, self.plan = spec, plan
        p = self.params
        layers = inject_lrvd(
            model.backbone,
            spec.target_modules,
            spec.r,
            spec.scaling,
            init_log_sigma2=p.init_log_sigma2,
            variant=p.variant,
            local_reparam=p.local_reparam,
        )
        keep = {id(t) for layer in layers.values() for t in (layer.A_mu, layer.B_mu, layer.rank_log_sigma2)}
        freeze_all_but(model, keep | {id(t) for t in model.head_parameters()})
        self._update_sampling(model, 0)
        return model

    def param_groups(self, model: ClassifierModel, plan: TrainPlan) -> list[dict]:
        """Means at ``lr``, log-variances at ``lr · log_sigma2_lr_mult``, both without weight decay
        (the GLUE bench's ``build_param_groups``: decay would shrink the means towards pruning);
        the head as every method's (:func:`lrvd.protocol.head_groups`: decay on weights only)."""
        train = plan.train
        layers = lrvd_modules(model).values()
        means = [t for layer in layers for t in (layer.A_mu, layer.B_mu)]
        log_vars = [layer.rank_log_sigma2 for layer in layers]
        groups = [
            {"params": means, "lr": train.lr, "weight_decay": 0.0},
            {"params": log_vars, "lr": train.lr * self.params.log_sigma2_lr_mult, "weight_decay": 0.0},
            *head_groups(model, train),
        ]
        return [g for g in groups if g["params"]]

    def training_loss(self, model, batch, logits, step):
        nll = nn.functional.cross_entropy(logits.float(), batch["labels"])
        kl = total_kl(model).to(nll.device)
        beta = self.kl_beta(step)
        loss = nll + (beta * self.params.kl_scale) * kl if beta > 0 and self.params.kl_scale > 0 else nll
        self.last_kl = float(kl.detach())
        return loss, {"nll": float(nll.detach()), "kl": self.last_kl, "beta": beta}

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        self.step = step
        self._update_sampling(model, step)
        logs = {"beta": self.kl_beta(step), "kl": self.last_kl}
        pruned = self.prune_due(step)
        if pruned:
            if self.params.gauge_fix:
                pruning.fix_gauge(model)
            removed = pruning.prune_ranks(model, self.params.tau, self.params.min_ranks, optimizer)
            logs["pruned_ranks"] = float(sum(removed.values()))
        if pruned or self.rank_log_due(step):
            logs["effective_rank"] = float(pruning.effective_rank(model, self.params.tau))
        return logs

    def rank_log_due(self, step: int) -> bool:
        """Whether this step's logs carry the effective rank: every ``log_every`` steps and at the
        last step. Not every step: its medians over every factor entry cost ~9 % of a step at r = 64 on
        every linear layer, and ``fit`` snapshots the ranks on its own (``rank_report``)."""
        if self.plan is None:
            return True
        every = max(1, self.plan.train.log_every)
        return step % every == 0 or step >= self.plan.total_steps

    @torch.no_grad()
    def predict_proba(self, model, batch, n_samples=None) -> torch.Tensor:
        """Mean of softmax over ``n_samples`` adapter-posterior draws; the mean model when 0."""
        n = self.params.n_samples if n_samples is None else int(n_samples)
        return mc_predict_proba(model, batch, n, self.params.mc_chunk, self.params.mc_memory_budget)

    def rank_statistics(self, model: ClassifierModel) -> dict[str, list[float]]:
        """Backbone module name → per-rank log α (what the rank-dynamics plots read)."""
        return pruning.rank_statistics(model.backbone)

    def rank_report(self, model) -> dict[str, int]:
        """Effective rank per module; also appends a log-α snapshot to ``log_alpha_history``."""
        stats = self.rank_statistics(model)
        self.log_alpha_history.append({"step": self.step, **stats})
        return {name: sum(1 for a in la if a < self.params.tau) for name, la in stats.items()}

    def parameter_counts(self, model) -> dict[str, int]:
        """``variational`` = the posterior's extra parameters: one log σ² per kept rank per module."""
        return {
            "trainable": count_parameters(model),
            "variational": sum(layer.r for layer in lrvd_modules(model).values()),
        }

    # -- persistence -------------------------------------------------------------------------------
    def module_ranks(self, model: ClassifierModel) -> dict[str, int]:
        return {name: layer.r for name, layer in lrvd_modules(model.backbone).items()}

    def extra_state(self, model):
        """Sidecar: every module's (possibly pruned) rank and its scaling."""
        return {}, {
            "ranks": self.module_ranks(model),
            "scaling": {n: m.scaling for n, m in lrvd_modules(model.backbone).items()},
        }

    def peft_export(self, model):
        """Posterior means as a plain peft LoRA (kept ranks via ``rank_pattern``); the per-rank log σ²
        are not LoRA weights and go to the sidecar."""
        from lrvd.adapter_io import LoraFactors, lora_export, native_names

        names = native_names(model)
        if not any(m.r for m in lrvd_modules(model.backbone).values()):
            return None  # every rank pruned: no LoRA left for peft; the sidecar keeps the state
        return lora_export(
            model,
            {
                n: LoraFactors(m.A_mu, m.B_mu, m.scaling, m.fan_in_fan_out, names[id(m.A_mu)], names[id(m.B_mu)])
                for n, m in lrvd_modules(model.backbone).items()
            },
        )

    def load_adapter(self, model, path) -> None:
        """Shrink freshly attached layers to the saved ranks, then load the tensors."""
        from lrvd.adapter_io import read_meta

        ranks: dict[str, int] = read_meta(path).get("extra", {}).get("ranks", {})
        layers = lrvd_modules(model.backbone)
        for name, r in ranks.items():
            if name not in layers:
                raise LRVDError(f"adapter at {path} has module {name!r} that this model does not adapt")
            if r > layers[name].r:
                raise LRVDError(
                    f"adapter at {path} has rank {r} for {name!r}, above the attached rank {layers[name].r}"
                )
            if r < layers[name].r:
                pruning.prune_layer(layers[name], torch.arange(r))
        super().load_adapter(model, path)

    def export_peft(self, model: ClassifierModel, path: str | Path) -> ClassifierModel:
        """Save the kept mean ranks as a plain peft LoRA adapter (see :mod:`lrvd.export`)."""
        from lrvd.export import save_peft_adapter

        return save_peft_adapter(model, path)
