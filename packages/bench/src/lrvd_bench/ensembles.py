"""Deep ensembles from trials the sweep runs anyway, instead of retraining M adapters.

A ``lora-ensemble`` trial costs M LoRA trainings. When the same sweep also runs plain ``lora`` with
the same task, backbone, adapter, training settings and search point over at least M seeds, those
trials *are* M independently seeded LoRA adapters: the ensemble is the mean of their saved
predictive probabilities (:func:`lrvd_baselines.lora_ensemble.ensemble_from_trials` semantics). The
sweep (:mod:`lrvd_bench.sweep.stages`) then leaves such ensemble trials out of Ray and
:func:`materialize` writes their ``result.json`` after the sweep.

Members of the ensemble for the i-th ensemble seed are the LoRA seeds ``L[(i + j) % len(L)]``,
j < M (L = the sweep's LoRA seeds, sorted): with exactly M LoRA seeds every ensemble seed would be
the same ensemble, so only the first is kept. Costs are reported as the members' sums (train and
evaluation time, parameters), so the leaderboard shows what the ensemble costs, not zero.
Opt out per run with ``method_params: {lora-ensemble: {reuse_trials: false}}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lrvd_bench.config import TrialSpec
from lrvd_bench.trial_folder import ERROR_FILE, RESULT_FILE, identity, write_row

ENSEMBLE, MEMBER = "lora-ensemble", "lora"
#: ``{ensemble trial_id: member trial_ids}`` of a sweep, written before its trials run
ENSEMBLES_FILE = "ensembles.json"


def _match_key(spec: TrialSpec) -> str:
    data = spec.to_dict()
    for key in ("method", "method_params", "seed", *TrialSpec.UNHASHED):
        data.pop(key, None)
    data.get("train", {}).pop("seed", None)  # the trial seed is copied into the train config
    return json.dumps(data, sort_keys=True)


def plan_reuse(specs: list[TrialSpec]) -> tuple[list[TrialSpec], dict[str, list[str]]]:
    """Split ``specs`` into those Ray must run and ``{ensemble trial_id: member trial_ids}``.

    Ensemble specs whose members would duplicate an earlier ensemble are dropped altogether.
    """
    from lrvd_baselines.lora_ensemble import LoRAEnsembleParams

    members_by_key: dict[str, list[TrialSpec]] = {}
    for spec in specs:
        if spec.method == MEMBER and not spec.method_params:
            members_by_key.setdefault(_match_key(spec), []).append(spec)
    keep: list[TrialSpec] = []
    reused: dict[str, list[str]] = {}
    seen_sets: set[tuple[str, ...]] = set()
    ensembles: dict[str, list[TrialSpec]] = {}
    for spec in specs:
        if spec.method == ENSEMBLE:
            ensembles.setdefault(_match_key(spec), []).append(spec)
        else:
            keep.append(spec)
    for key, group in ensembles.items():
        members = sorted(members_by_key.get(key, []), key=lambda s: s.seed)
        for i, spec in enumerate(sorted(group, key=lambda s: s.seed)):
            params = dict(spec.method_params)
            reuse = params.pop("reuse_trials", True)
            m = LoRAEnsembleParams(**{k: v for k, v in params.items() if k == "n_members"}).n_members
            only_defaults = set(params) <= {"n_members"}
            if not (reuse and only_defaults and len(members) >= m):
                keep.append(spec)
                continue
            chosen = tuple(members[(i + j) % len(members)].trial_id for j in range(m))
            if tuple(sorted(chosen)) in seen_sets:
                continue
            seen_sets.add(tuple(sorted(chosen)))
            keep.append(spec)  # listed in specs.json; not sent to Ray (see lrvd_bench.sweep.stages)
            reused[spec.trial_id] = list(chosen)
    return keep, reused


def materialize(run_dir: str | Path, specs: list[TrialSpec], reused: dict[str, list[str]]) -> None:
    """Write result.json (or error.json) for each reused ensemble from its members' files."""
    import numpy as np

    from lrvd.metrics import classification_metrics
    from lrvd_bench.predictions import read_predictions, write_predictions
    from lrvd_bench.trial import learned_flag

    trials = Path(run_dir) / "trials"
    by_id = {s.trial_id: s for s in specs}
    for ens_id, member_ids in reused.items():
        folder = trials / ens_id
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / RESULT_FILE).is_file():
            continue
        spec = by_id[ens_id]
        (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
        rows, preds = [], []
        for mid in member_ids:
            result, saved = trials / mid / RESULT_FILE, read_predictions(trials / mid, spec.task)
            if result.is_file() and saved is not None:
                rows.append(json.loads(result.read_text()))
                preds.append(saved)
        if len(rows) < len(member_ids):
            error = {
                **identity(spec),
                "status": "failed",
                "error": f"ensemble members did not all finish: {', '.join(member_ids)}",
            }
            write_row(folder / ERROR_FILE, error)
            continue
        probs, labels, members = ensemble_set(preds)
        metrics = classification_metrics(probs, labels)
        final_loss = float(np.mean([r["final_train_loss"] for r in rows]))
        final_nll = float(np.mean([r.get("final_train_nll", r["final_train_loss"]) for r in rows]))
        learned, uniform_loss, majority = learned_flag(final_nll, probs, labels, metrics["accuracy"])
        write_predictions(folder, spec.task, spec.task, probs, labels, list(preds[0].ids), members)
        evaluations = {}
        for name in rows[0].get("eval_tasks") or []:  # the members' scores on the other evaluation tasks
            shifted = [read_predictions(trials / mid, spec.task, name) for mid in member_ids]
            if any(s is None for s in shifted):
                continue
            p, y, draws = ensemble_set(shifted)
            write_predictions(folder, spec.task, name, p, y, list(shifted[0].ids), draws)
            evaluations[name] = {
                **classification_metrics(p, y),
                "n_eval": len(y),
                "eval_time_s": sum(r["evaluations"][name]["eval_time_s"] for r in rows),
                "predictive": "sampled",
            }
        ranks: dict[str, int] = {}
        for r in rows:
            for module, rank in (r.get("rank_per_module") or {}).items():
                ranks[module] = ranks.get(module, 0) + int(rank)
        row = {
            **rows[0],  # shared facts: data, device, versions
            **identity(spec),
            "status": "ok",
            "error": "",
            **metrics,
            "learned": learned,
            "final_train_loss": final_loss,
            "final_train_nll": final_nll,
            "uniform_loss": uniform_loss,
            "majority_accuracy": majority,
            "effective_rank": sum(ranks.values()) if ranks else None,
            "rank_per_module": ranks,
            "trainable_params": sum(int(r["trainable_params"]) for r in rows),
            "variational_params": 0,
            "train_time_s": sum(r["train_time_s"] for r in rows),
            "time_per_step_s": sum(r["time_per_step_s"] for r in rows),
            "posthoc_time_s": sum(r.get("posthoc_time_s") or 0.0 for r in rows),
            "eval_time_s": sum(r["eval_time_s"] for r in rows),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
            "predictive": "sampled",  # its draws are the members
            "eval_tasks": list(evaluations),
            "evaluations": evaluations,
            "reused_members": ",".join(member_ids),
        }
        write_row(folder / RESULT_FILE, row)


def ensemble_set(members: list) -> tuple:
    """(ensemble probabilities, labels, member probabilities ``[M, N, C]``) of one evaluation set from its
    members' saved :class:`~lrvd_bench.predictions.Predictions`: the members are the ensemble's draws."""
    import torch

    from lrvd_baselines.lora_ensemble import ensemble_probs

    draws = [torch.as_tensor(m.probs) for m in members]
    return ensemble_probs(draws), torch.as_tensor(members[0].labels), torch.stack(draws)
