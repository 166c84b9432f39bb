"""BayesLoRA inside the Hugging Face ``Trainer``.

:class:`BayesLoraTrainer` is a ``transformers.Trainer`` for a model prepared with
:func:`lrvd.get_bayeslora_model`:

- the loss is the model's own loss plus ``kl_scale · KL`` (:func:`lrvd.hf.kl_loss`);
- after every optimizer step :class:`BayesLoraCallback` runs :func:`lrvd.hf.bayeslora_step`, which
  prunes the ranks with log α ≥ τ when due (``prune_every`` / ``prune_start`` of the config) and keeps
  the optimizer in step with the smaller parameters;
- every log record gains ``kl``, ``effective_rank`` and ``pruned_ranks`` (so far); ``rank_history``
  keeps the per-module ranks at every log step.

Kept apart from :mod:`lrvd.hf` because importing ``transformers.Trainer`` is slow.
Differences from the suite's ``bayeslora`` method: the Trainer's own optimizer and schedule (the log
variances are trained at the Trainer's learning rate, not ``log_sigma2_lr_mult`` times it), and no KL
warm-up.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback

from lrvd.hf import bayeslora_config, bayeslora_step, kl_loss, rank_report


class BayesLoraCallback(TrainerCallback):
    """Prunes after each optimizer step (``state.global_step`` counts optimizer steps from 1)."""

    def __init__(self) -> None:
        self.pruned_total = 0

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is not None:
            self.pruned_total += int(bayeslora_step(model, state.global_step, optimizer).get("pruned_ranks", 0))
        return control


class BayesLoraTrainer(Trainer):
    """``Trainer`` that adds the KL term, prunes ranks during training and logs them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bayeslora_config(self.model)  # one clear error if the model has no BayesLoRA adapters
        self.bayeslora_callback = BayesLoraCallback()
        self.add_callback(self.bayeslora_callback)
        self.last_kl = 0.0
        self.rank_history: list[dict[str, Any]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        kl = kl_loss(model).to(loss.device)
        self.last_kl = float(kl.detach()) / max(bayeslora_config(model).kl_scale, 1e-300)
        loss = loss + kl
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        ranks = rank_report(self.model)
        logs = {
            **logs,
            "kl": self.last_kl,
            "effective_rank": float(sum(ranks.values())),
            "pruned_ranks": float(self.bayeslora_callback.pruned_total),
        }
        self.rank_history.append({"step": self.state.global_step, **ranks})
        super().log(logs, *args, **kwargs)
