"""BayesLoRA inside the Hugging Face ``Trainer``.

:class:`BayesLoraTrainer` is a ``transformers.Trainer`` for a model prepared with
:func:`lrvd.get_bayeslora_model`. It trains the suite's ``bayeslora`` method, through that method's
own hooks (:mod:`lrvd.hf`):

- the optimizer's parameter groups are the method's (log σ² at ``log_sigma2_lr_mult`` × the
  Trainer's learning rate, no decay on the adapter; ``weight_decay`` on the ``modules_to_save``
  matrices), with the optimizer class ``TrainingArguments.optim`` names;
- the loss is the method's ``training_loss`` on the model's logits (CE + β(step) · kl_scale · KL, KL
  warm-up and ramp as fractions of the Trainer's ``max_steps``), see :func:`lrvd.hf.bayeslora_loss`;
- after every optimizer step :class:`BayesLoraCallback` runs the method's ``on_step_end`` (sampling
  schedule; pruning of the ranks with log α ≥ τ every ``prune_every`` steps from ``prune_start``,
  keeping the optimizer in step with the smaller parameters);
- every log record gains ``nll``, ``kl``, ``beta``, ``effective_rank`` and ``pruned_ranks`` (so far);
  ``rank_history`` keeps the per-module ranks at every log step.

What stays the Trainer's: the learning-rate schedule (``lr_scheduler_type``, ``warmup_*``), gradient
clipping (``max_grad_norm``) and batch order; the task head's own rate is ``head_lr``.
Kept apart from :mod:`lrvd.hf` because importing ``transformers.Trainer`` is slow.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback

from lrvd.hf import bayeslora_config, bayeslora_loss, bayeslora_method, classifier_view, rank_report, start_training


class BayesLoraCallback(TrainerCallback):
    """Tells the method the run's length at the start; runs its step hook after each optimizer step
    (``state.global_step`` counts optimizer steps from 1)."""

    def __init__(self, trainer: BayesLoraTrainer) -> None:
        self.trainer = trainer
        self.pruned_total = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainer.start_bayeslora(state.max_steps)
        return control

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is not None:
            # the method's hook alone: bayeslora_step would add an effective rank nobody here reads
            logs = bayeslora_method(model).on_step_end(classifier_view(model), optimizer, state.global_step) or {}
            self.pruned_total += int(logs.get("pruned_ranks", 0))
        return control


class BayesLoraTrainer(Trainer):
    """``Trainer`` that trains with the ``bayeslora`` method's objective, groups and pruning."""

    def __init__(self, *args: Any, head_lr: float | None = None, **kwargs: Any) -> None:
        """``head_lr``: learning rate of the ``modules_to_save`` (the bench's ``head_lr``; default: the
        Trainer's ``learning_rate``)."""
        self.head_lr = head_lr
        super().__init__(*args, **kwargs)
        bayeslora_config(self.model)  # one clear error if the model has no BayesLoRA adapters
        # The method's loss is a per-batch mean: the Trainer divides it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.bayeslora_callback = BayesLoraCallback(self)
        self.add_callback(self.bayeslora_callback)
        self.last_logs: dict[str, float] = {}
        self.rank_history: list[dict[str, Any]] = []

    def n_train(self) -> int:
        try:
            return len(self.train_dataset) if self.train_dataset is not None else 0  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset
            return 0

    def start_bayeslora(self, total_steps: int) -> list[dict[str, Any]]:
        return start_training(
            self.model,
            total_steps,
            self.args.learning_rate,
            n_train=self.n_train(),
            weight_decay=self.args.weight_decay,
            head_lr=self.head_lr,
        )

    def create_optimizer(self, model=None):
        """The method's parameter groups in the optimizer ``args.optim`` names (AdamW by default)."""
        if self.optimizer is None:
            groups = self.start_bayeslora(max(0, self.args.max_steps))  # the length is set again at train begin
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss, logs = bayeslora_loss(self.model, inputs, outputs, self.state.global_step)
        self.last_logs = {k: float(v) for k, v in logs.items()}
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        ranks = rank_report(self.model)
        logs = {
            **logs,
            **({k: v for k, v in self.last_logs.items() if k in ("nll", "kl", "beta")} if "loss" in logs else {}),
            "effective_rank": float(sum(ranks.values())),
            "pruned_ranks": float(self.bayeslora_callback.pruned_total),
        }
        self.rank_history.append({"step": self.state.global_step, **ranks})
        super().log(logs, *args, **kwargs)
