"""BayesLoRA: LoRA with Low-Rank Variational Dropout (Doyle et al., arXiv 2506.22809).

Each adapted module becomes an :class:`~lrvd.layers.LRVDLinear` (rank-wise Gaussian posterior over
the LoRA factors, one log σ² per rank); training maximises a scaled ELBO, ranks whose noise-to-signal
ratio exceeds τ are pruned, and prediction averages softmax over adapter-only posterior samples.

Objective (per optimizer step, with per-example mean cross-entropy)::

    loss = CE + β(step) · kl_scale · Σ_modules KL(q ‖ log-uniform) / D

with D = the micro-batch size under ``llm-scripts`` (the authors' LLM scripts divide the KL by
``x.size(0)``) and D = 1 under ``glue-bench`` (the GLUE bench adds the scaled KL as is).
The exact minibatch ELBO divided by the training-set size N is CE + KL/N, i.e. kl_scale / D = 1/N.
Like the authors we expose kl_scale as a free per-dataset weight instead: with N ≈ 10⁴ and a
log-uniform prior on ~10⁵–10⁷ factor entries, 1/N lets the KL dominate and collapses ranks before
the data has spoken. β(step) is 0 for the first ``kl_warmup`` fraction of steps and then ramps
linearly to 1 over ``kl_ramp`` (the authors' VLORASchedule; neither the GLUE bench nor the LLM
scripts anneal, our default).

Two protocols of the authors' code, chosen by name with ``protocol`` (docs/methods.md, BayesLoRA):

- ``llm-scripts`` (default; ``bayeslora_llama.py`` / ``bayeslora_gpt.py``, ``train_one``): sample the
  adapter from step 0 with the local reparameterisation trick, KL divided by the micro-batch size,
  log-variances in the means' AdamW group at the full lr, MC predictive over ``n_samples`` = 5 draws
  (``--mc-eval 5``) that also use the local reparameterisation. After a prune that changed a rank the
  scripts build a new AdamW and schedule (``_rebuild_opt_and_sched``): moments reset, next step at lr 0.
- ``glue-bench`` (``run_glue_bench.py`` / ``glue_helpers.py``, ``train_bayeslora``): never sample;
  train the posterior means (σ moves only through the KL) at log σ² lr × 0.1
  (``build_param_groups``) and predict with the mean model; a new AdamW and schedule after *every*
  prune check (``make_optim_and_sched``), changed or not.

Protocol-dependent parameters left at ``None`` take the protocol's value (:data:`PROTOCOLS`). Both
protocols prune during training at steps ``t ≥ start`` with ``t % prune_every == 0`` (t = updates done).
Both protocols decay neither the adapter means nor the log-variances; only the head's weight
matrices get ``weight_decay`` (the GLUE bench's ``build_param_groups``; the LLM scripts' default
weight decay is 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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

#: What ``after_prune`` may be: how training goes on after a prune check.
AFTER_PRUNE = ("rebuild-on-change", "rebuild-every-check", "keep-moments")

#: The authors' two protocols: what every protocol-dependent parameter defaults to.
PROTOCOLS: dict[str, dict[str, float | int | bool | str]] = {
    # bayeslora_llama.py / bayeslora_gpt.py (train_one and argparse defaults).
    "llm-scripts": {
        # set_bayeslora_sampling(model, True) before every training forward, from step 0.
        "sample_warmup": 0.0,
        # the LLaMA/GPT models are wrapped with local_reparam=True.
        "local_reparam": True,
        # --mc-eval 5: evaluate_loss / evaluate_token_metrics average 5 sampled softmaxes.
        "n_samples": 5,
        # --prune-every 200 from --prune-start-step 0 (bayeslora_llama.py argparse defaults;
        # bayeslora_gpt.py's usage example passes the same 200).
        "prune_every": 200,
        # _optimizer_and_sched: one AdamW over every trainable tensor at --lr (log σ² included).
        "log_sigma2_lr_mult": 1.0,
        # kl_term = bayeslora_step(model, 1.0) / x.size(0): the KL per example of the micro-batch.
        "kl_per_example": True,
        # if changed: opt, sched = _rebuild_opt_and_sched(...) (only when a rank was removed).
        "after_prune": "rebuild-on-change",
    },
    # run_glue_bench.py / glue_helpers.py (train_bayeslora, build_param_groups, TrainConfig).
    "glue-bench": {
        # sampling is never switched on; evaluate_accuracy / evaluate_metrics run the mean model.
        "sample_warmup": 1.0,
        "local_reparam": False,
        "n_samples": 0,
        # run_glue_bench.py --prune_every 2000 (argparse default), from the LR warm-up's end.
        "prune_every": 2000,
        # build_param_groups: logvars at adapter_lr * 0.1.
        "log_sigma2_lr_mult": 0.1,
        # loss = ce + scaled_kl(model): the summed KL times kl_scale, not divided by the batch.
        "kl_per_example": False,
        # make_optim_and_sched(step_already=step) after every prune check, changed or not.
        "after_prune": "rebuild-every-check",
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
            "scripts 5, glue-bench 0)"
        },
    )
    mc_chunk: int = field(
        default=0,
        metadata={
            "help": "MC samples per forward pass (0: by device, a loop on CPU, else chosen from mc_memory_budget; "
            "1: loop; n_samples: all at once)"
        },
    )
    mc_memory_budget: float = field(
        default=0.1,
        metadata={
            "help": "with mc_chunk 0 off CPU: extra peak memory the MC predictive may use, as a fraction of "
            "one deterministic pass"
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
    log_sigma2_lr_mult: float | None = field(
        default=None,
        metadata={
            "help": "learning-rate multiplier of the log variances, no weight decay (default: protocol's, "
            "llm-scripts 1, glue-bench 0.1)"
        },
    )
    kl_per_example: bool | None = field(
        default=None,
        metadata={
            "help": "divide the KL by the micro-batch size (default: protocol's, llm-scripts true, glue-bench false)"
        },
    )
    after_prune: str | None = field(
        default=None,
        metadata={
            "help": "after a prune check: rebuild-on-change (new AdamW, next step at lr 0, when a rank was "
            "removed; llm-scripts) | rebuild-every-check (the same at every check; glue-bench) | "
            "keep-moments (slice the AdamW moments of the kept ranks and go on)"
        },
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
        if self.after_prune not in AFTER_PRUNE:
            raise unknown_choice("BayesLoRA after_prune", self.after_prune, AFTER_PRUNE)
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
        #: glue-bench: the tensors a rebuild replaced, which get no gradient in the step after it
        self._no_grad_next: list[nn.Parameter] = []
        #: steps the LR schedule runs behind the loop: 1 after an llm-scripts rebuild (restart_optimizer)
        self.schedule_lag = 0

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
        """A prune check after ``step`` updates: ``step >= start`` and ``step % prune_every == 0``.

        Both authors' loops test the same condition on the step count: the LLM scripts on
        ``global_step`` right after its update (``global_step >= prune_start_step and global_step %
        prune_every == 0``), the GLUE bench on its 0-based step before that step's update, i.e. after
        ``step`` updates. A start that is not a multiple of ``prune_every`` delays the first check to
        the next multiple (the GLUE bench's CoLA run, 1,340 steps with start 80, never checks).
        """
        p = self.params
        if p.prune_every <= 0 or step <= 0:
            return False
        start = self._steps(p.prune_start if p.prune_start is not None else min(1.0, p.kl_warmup + p.kl_ramp))
        return step >= start and step % p.prune_every == 0

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
        """Means at ``lr``, log-variances at ``lr · log_sigma2_lr_mult`` (llm-scripts 1: the scripts'
        single AdamW group; glue-bench 0.1: ``build_param_groups``), both without weight decay (the
        GLUE bench's groups; the LLM scripts' weight decay defaults to 0); the head as every
        method's (:func:`lrvd.protocol.head_groups`: decay on weights only)."""
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

    def kl_weight(self, batch: dict[str, torch.Tensor], step: int) -> float:
        """β(step) · kl_scale, divided by the micro-batch size under ``kl_per_example`` (the LLM
        scripts' ``bayeslora_step(model, 1.0) / x.size(0)``; a multiple-choice batch counts questions)."""
        weight = self.kl_beta(step) * self.params.kl_scale
        if self.params.kl_per_example:
            weight /= max(1, int(batch["labels"].shape[0]))
        return weight

    def configure_optimizers(self, model: ClassifierModel, plan: TrainPlan):
        """The shared AdamW and schedule, the schedule read ``schedule_lag`` steps behind the loop."""
        optimizer, shared = super().configure_optimizers(model, plan)
        factor = shared.lr_lambdas[0]
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: factor(max(0, step - self.schedule_lag))
        )

    def training_loss(self, model, batch, logits, step):
        nll = nn.functional.cross_entropy(logits.float(), batch["labels"])
        kl = total_kl(model).to(nll.device)
        weight = self.kl_weight(batch, step)
        loss = nll + weight * kl if weight > 0 else nll
        self.last_kl = float(kl.detach())
        return loss, {"nll": float(nll.detach()), "kl": self.last_kl, "beta": self.kl_beta(step)}

    @contextlib.contextmanager
    def step_context(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """After a glue-bench rebuild, drop the gradient of the tensors the prune replaced.

        The GLUE bench prunes after the step's forward pass, so that step's gradient lands on the old
        tensors and the new ones (the changed modules' A, B, log σ²) are skipped by the fresh AdamW
        for one step (their moments start a step later than the others').
        """
        yield
        for param in self._no_grad_next:
            param.grad = None
        self._no_grad_next = []

    def restart_optimizer(self, optimizer: torch.optim.Optimizer, lag: int) -> None:
        """The authors' rebuild after a prune: a new AdamW (moments and step counts reset) and a new
        ``get_linear_schedule_with_warmup`` moved to the current step, whose first step runs at the
        schedule's value at step 0 (lr 0 with a warm-up, the full lr without); the loop's scheduler
        sets the rate again after that step, ``lag`` steps behind the loop: the LLM scripts set the new
        schedule's ``last_epoch`` to ``global_step − 1`` (one step behind from then on, whatever the
        earlier rebuilds), the GLUE bench to its step (none)."""
        optimizer.state.clear()
        self.schedule_lag = lag
        warmup = int(round(self.plan.total_steps * self.plan.train.warmup_ratio)) if self.plan is not None else 0
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if warmup > 0 else group.get("initial_lr", group["lr"])

    def on_step_end(self, model, optimizer, step) -> dict[str, float]:
        self.step = step
        self._update_sampling(model, step)
        logs = {"beta": self.kl_beta(step), "kl": self.last_kl}
        pruned = self.prune_due(step)
        if pruned:
            if self.params.gauge_fix:
                pruning.fix_gauge(model)
            before = {id(t) for t in self._variational_tensors(model)}
            removed = pruning.prune_ranks(model, self.params.tau, self.params.min_ranks, optimizer)
            logs["pruned_ranks"] = float(sum(removed.values()))
            changed = any(removed.values())
            rebuild = self.params.after_prune == "rebuild-every-check" or (
                self.params.after_prune == "rebuild-on-change" and changed
            )
            if rebuild and optimizer is not None:
                self.restart_optimizer(optimizer, lag=int(self.params.after_prune == "rebuild-on-change"))
                if self.params.after_prune == "rebuild-every-check":
                    self._no_grad_next = [t for t in self._variational_tensors(model) if id(t) not in before]
        if pruned or self.rank_log_due(step):
            logs["effective_rank"] = float(pruning.effective_rank(model, self.params.tau))
        return logs

    @staticmethod
    def _variational_tensors(model: nn.Module) -> list[nn.Parameter]:
        return [t for layer in lrvd_modules(model).values() for t in (layer.A_mu, layer.B_mu, layer.rank_log_sigma2)]

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
    def training_state(self, model):
        """Plain attributes (step, KL, schedule lag, log-α history) plus the tensors whose next gradient a
        glue-bench rebuild drops, by name (a checkpoint can fall between that prune and the next step)."""
        names = {id(p): n for n, p in model.named_parameters()}
        return {**super().training_state(model), "no_grad_next": [names[id(p)] for p in self._no_grad_next]}

    def load_training_state(self, model, state):
        state = dict(state)
        params = dict(model.named_parameters())
        self._no_grad_next = [params[n] for n in state.pop("no_grad_next", [])]
        super().load_training_state(model, state)

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
