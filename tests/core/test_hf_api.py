"""BayesLoRA on plain Hugging Face models: get_bayeslora_model, kl_loss, bayeslora_step, predict_proba,
BayesLoraTrainer, and the example that uses them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrvd
from conftest import TinyBertClassifier, make_toy_dataset
from lrvd.inject import lrvd_modules, sampling
from lrvd.layers import total_kl

REPO = Path(__file__).resolve().parents[2]


def hf_model(**config):
    model = TinyBertClassifier(seed=0).backbone  # a plain BertForSequenceClassification
    return lrvd.get_bayeslora_model(
        model, lrvd.BayesLoraConfig(**{"r": 4, "modules_to_save": ["classifier"], **config})
    )


def inputs(n=8):
    ids, mask, labels = make_toy_dataset(n).tensors
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_only_adapters_and_listed_modules_require_grad():
    model = hf_model()
    layers = lrvd_modules(model)
    assert len(layers) == 4  # query and value in 2 layers
    expected = {id(t) for m in layers.values() for t in (m.A_mu, m.B_mu, m.rank_log_sigma2)}
    expected |= {id(p) for p in model.classifier.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    trainable, total = lrvd.hf.trainable_summary(model)
    assert trainable == 4 * (4 * 32 + 32 * 4 + 4) + (32 * 2 + 2) and total > 20 * trainable


def test_forward_returns_the_models_own_output_type():
    from transformers.modeling_outputs import SequenceClassifierOutput

    out = hf_model()(**inputs())
    assert type(out) is SequenceClassifierOutput and out.loss is not None and out.logits.shape == (8, 2)


def test_no_matching_target_module_is_one_line_with_the_linear_module_names():
    with pytest.raises(lrvd.LRVDError) as err:
        lrvd.get_bayeslora_model(
            TinyBertClassifier().backbone, lrvd.BayesLoraConfig(target_modules=["q_proj", "v_proj"])
        )
    message = str(err.value)
    assert "\n" not in message and "q_proj" in message
    assert message.endswith("the model's linear module names: query, key, value, dense, classifier")


def test_kl_loss_is_the_scaled_total_kl():
    model = hf_model(kl_scale=1e-3)
    torch.testing.assert_close(lrvd.kl_loss(model), 1e-3 * total_kl(model))
    assert lrvd.kl_loss(model).requires_grad


def test_predict_proba_accepts_hf_inputs_and_outputs():
    model = hf_model(init_log_sigma2=-1.0, n_samples=5)
    with torch.no_grad():  # grow B so the posterior noise shows in the logits
        for m in lrvd_modules(model).values():
            m.B_mu.normal_(0, 0.5)
    x = inputs()
    model.eval()
    mean = lrvd.predict_proba(model, x, n_samples=0)
    torch.testing.assert_close(mean, torch.softmax(model(**x).logits, -1))
    got = lrvd.predict_proba(model, x, n_samples=5, seed=3)
    with torch.no_grad(), sampling(model, True):  # independent reference: a plain loop
        torch.manual_seed(3)
        ref = (
            sum(
                torch.softmax(model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits, -1)
                for _ in range(5)
            )
            / 5
        )
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, mean, atol=1e-3)
    torch.testing.assert_close(lrvd.predict_proba(model, x, seed=3), got)  # config n_samples = 5
    from transformers import BatchEncoding

    torch.testing.assert_close(lrvd.predict_proba(model, BatchEncoding(x), n_samples=5, seed=3), got)
    fast = lrvd.predict_proba(model, x, n_samples=5, seed=3, chunk=0)
    torch.testing.assert_close(fast.sum(-1), torch.ones(8))


def test_step_hook_prunes_on_schedule_and_keeps_the_optimizer_working():
    model = hf_model(tau=-1e9, min_ranks=1, prune_every=3)
    groups = lrvd.hf.start_training(model, total_steps=4, lr=1e-2)  # a custom loop: the method's groups
    opt = torch.optim.AdamW(groups)
    x = inputs()
    for step in range(1, 5):
        loss, _ = lrvd.hf.bayeslora_loss(model, x, model(**x), step - 1)
        loss.backward()
        opt.step()
        opt.zero_grad()
        logs = lrvd.bayeslora_step(model, step, opt)
        assert ("pruned_ranks" in logs) == (step == 3)
    assert logs["effective_rank"] == 0.0  # tau = -inf: every kept rank counts as off
    assert [m.r for m in lrvd_modules(model).values()] == [1, 1, 1, 1]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_custom_loop_groups_are_the_methods_log_variances_at_a_tenth_of_the_lr():
    model = hf_model(log_sigma2_lr_mult=0.1)  # the glue-bench protocol's multiplier, set explicitly
    groups = lrvd.hf.start_training(model, total_steps=10, lr=2e-3, weight_decay=0.01)
    layers = lrvd_modules(model).values()
    by_param = {id(p): g for g in groups for p in g["params"]}
    for layer in layers:
        assert by_param[id(layer.rank_log_sigma2)]["lr"] == pytest.approx(2e-4)  # log_sigma2_lr_mult 0.1
        assert by_param[id(layer.A_mu)]["lr"] == 2e-3 and by_param[id(layer.A_mu)]["weight_decay"] == 0.0
    assert by_param[id(model.classifier.weight)]["weight_decay"] == 0.01
    assert by_param[id(model.classifier.bias)]["weight_decay"] == 0.0
    assert set(by_param) == {id(p) for p in model.parameters() if p.requires_grad}


def test_the_loss_is_the_methods_objective_with_its_kl_warmup():
    """CE + beta(step) * kl_scale * KL / B (llm-scripts: the KL per example of the batch), beta = 0
    during kl_warmup then a linear ramp (hand-computed)."""
    model = hf_model(kl_scale=1e-2, kl_warmup=0.5, kl_ramp=0.25)
    lrvd.hf.start_training(model, total_steps=8, lr=1e-3)  # warm-up: steps 0-3, ramp: 4-5
    x = inputs()
    model.eval()
    with torch.no_grad():
        out = model(**x)
        ce = torch.nn.functional.cross_entropy(out.logits, x["labels"])
        kl = total_kl(model)
        for step, beta in ((0, 0.0), (3, 0.0), (4, 0.0), (5, 0.5), (6, 1.0), (7, 1.0)):
            loss, logs = lrvd.hf.bayeslora_loss(model, x, out, step)
            torch.testing.assert_close(loss, ce + beta * 1e-2 * kl / len(x["labels"]))
            assert logs["beta"] == beta


def test_a_loss_the_method_does_not_cover_gets_the_scaled_kl_once():
    """Multi-label targets (float labels, the model's own BCE loss): loss + β(step) · kl_scale · KL, with
    the KL logged unscaled; β = 1 past a zero warm-up."""
    model = hf_model(kl_scale=1e-2, kl_warmup=0.0, kl_ramp=0.0)
    lrvd.hf.start_training(model, total_steps=8, lr=1e-3)
    x = inputs()
    x["labels"] = torch.nn.functional.one_hot(x["labels"], 2).float()
    model.eval()
    with torch.no_grad():
        out = model(**x)
        loss, logs = lrvd.hf.bayeslora_loss(model, x, out, 3)
        kl = total_kl(model)
    assert float(kl) > 0
    torch.testing.assert_close(loss, out.loss + 1e-2 * kl)
    assert logs == {"nll": pytest.approx(float(out.loss)), "kl": pytest.approx(float(kl))}


def test_trainer_adds_the_kl_prunes_and_logs_ranks(tmp_path):
    from transformers import TrainingArguments

    model = hf_model(kl_scale=1e-2, tau=-1e9, min_ranks=2, prune_every=2, prune_start=0.5, log_sigma2_lr_mult=0.1)
    x = inputs(32)
    data = [{k: v[i] for k, v in x.items()} for i in range(32)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        logging_steps=1,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = lrvd.BayesLoraTrainer(model=model, args=args, train_dataset=data)
    batch = {k: v[:8] for k, v in x.items()}
    model.eval()  # posterior means: both sides see the same adapter weights
    loss = trainer.compute_loss(model, batch)
    torch.testing.assert_close(loss, model(**batch).loss + 1e-2 * total_kl(model) / 8)  # KL per example
    model.train()
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    assert [r["pruned_ranks"] for r in logs] == [0.0, 8.0, 8.0, 8.0]  # 4 modules x (4 - 2) ranks at step 2
    assert all(r["kl"] > 0 for r in logs)
    assert trainer.rank_history[-1]["bert.encoder.layer.0.attention.self.query"] == 0  # tau = -inf
    assert [m.r for m in lrvd_modules(model).values()] == [2, 2, 2, 2]
    log_vars = {id(m.rank_log_sigma2) for m in lrvd_modules(model).values()}
    initial = {g["initial_lr"] for g in trainer.optimizer.param_groups if any(id(p) in log_vars for p in g["params"])}
    assert len(initial) == 1 and initial.pop() == pytest.approx(1e-3)  # log_sigma2_lr_mult 0.1 x the Trainer's 1e-2


def test_the_trainer_refuses_a_model_without_adapters(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(lrvd.LRVDError, match="get_bayeslora_model"):
        lrvd.BayesLoraTrainer(model=TinyBertClassifier().backbone, args=args)


def test_the_example_learns_matches_the_peft_lora_control_on_real_data_and_reloads_exactly():
    """The example on the pretrained MiniLM and bundled ARC-Easy rows: BayesLoRA (``BayesLoraTrainer``)
    and the peft-LoRA control (plain ``Trainer``, same settings) both learn (accuracy above the majority
    class by 2 binomial standard errors), BayesLoRA is not below the control by more than one standard
    error, and the saved adapter reloads to the same predictions (docs/methods.md)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hf_trainer_bayeslora.py"), *EXAMPLE_CI_ARGS],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    runs = {r["run"]: r for r in summary["results"]}
    bayes, control = runs["bayeslora"], runs["peft-lora"]
    majority, n = summary["majority"], summary["n_eval"]
    learned = majority + 2 * math.sqrt(majority * (1 - majority) / n)
    assert control["accuracy"] > learned, summary  # the control learns: the comparison can tell
    assert bayes["accuracy"] > learned, summary
    assert bayes["accuracy"] >= control["accuracy"] - control["se"], summary
    assert summary["reload_max_logit_diff"] < 1e-6 and summary["reload_same_predictions"]


#: The example's defaults, spelled out (the run docs/methods.md reports): 800 training questions, 200 scored
EXAMPLE_CI_ARGS = ["--task", "arc-e", "--limit-train", "800", "--limit-eval", "200", "--max-steps", "100"]
EXAMPLE_CI_ARGS += ["--batch-size", "8", "--max-length", "48", "--lr", "2e-3", "--head-lr", "1e-2"]


def test_hf_config_defaults_are_the_bayeslora_methods_under_its_default_protocol():
    """The HF API trains the same model as ``bench run --methods bayeslora`` unless told otherwise."""
    import dataclasses

    from lrvd import BayesLoraConfig
    from lrvd.methods.bayeslora import BayesLoRAParams

    method, hf = BayesLoRAParams(), BayesLoraConfig()  # protocol llm-scripts: the authors' LLaMA/GPT scripts
    names = [f.name for f in dataclasses.fields(BayesLoRAParams)]
    assert {"kl_scale", "kl_warmup", "prune_start", "log_sigma2_lr_mult", "n_samples", "prune_every"} <= set(names)
    assert {k: getattr(hf, k) for k in names} == {k: getattr(method, k) for k in names}
    assert hf.method_params() == dataclasses.asdict(method)
