"""Saving, reloading and merging a BayesLoRA model made by ``lrvd.get_bayeslora_model``.

The base model is a tiny BERT saved as a plain transformers checkpoint; every reload happens in a
fresh Python process that loads that checkpoint and the adapter folder, so nothing in memory helps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import lrvd
from conftest import TinyBertClassifier, make_toy_dataset
from lrvd.inject import lrvd_modules, sampling


def inputs(n=16):
    ids, mask, _ = make_toy_dataset(n, seed=5).tensors
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A plain tiny BERT classifier checkpoint (the 'pretrained' base in every test)."""
    path = tmp_path_factory.mktemp("base")
    TinyBertClassifier(seed=0).backbone.save_pretrained(path)
    return path


def base_model(base_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(base_dir)


def trained(base_dir, prune: bool):
    """A BayesLoRA model with a posterior that differs from its init: grown means, varied log σ² and,
    with ``prune``, a different number of ranks kept per module."""
    model = lrvd.get_bayeslora_model(
        base_model(base_dir), lrvd.BayesLoraConfig(r=4, modules_to_save=["classifier"], init_log_sigma2=-3.0)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, layer in enumerate(lrvd_modules(model).values()):
            layer.B_mu.copy_(torch.randn(layer.B_mu.shape, generator=g))
            layer.rank_log_sigma2.copy_(torch.randn(layer.r, generator=g) - 1.0)
            if prune:  # keep 1..4 ranks: module i keeps 4 - i
                lrvd.pruning.prune_layer(layer, torch.arange(4 - i))
        model.classifier.weight.mul_(30.0)
    return model


def reference(model, x, seed=7):
    """(posterior-mean logits, 5-sample predictive under ``seed``) of a model in this process."""
    model.eval()
    with torch.no_grad(), sampling(model, False):
        mean = model(**x).logits
    return mean, lrvd.predict_proba(model, x, n_samples=5, seed=seed)


def run_fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


RELOAD = """
    import json, torch
    from transformers import AutoModelForSequenceClassification
    import lrvd
    from lrvd.inject import sampling
    base_dir, adapter_dir, x_file = {args}
    x = torch.load(x_file)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = lrvd.BayesLoraModel.from_pretrained(base, adapter_dir)
    with torch.no_grad(), sampling(model, False):
        mean = model(**x).logits
    probs = lrvd.predict_proba(model, x, n_samples=5, seed=7)
    print(json.dumps({{"mean": mean.tolist(), "probs": probs.tolist(),
                      "ranks": [m.r for m in lrvd.lrvd_modules(model).values()],
                      "training": model.training, "grads": any(p.requires_grad for p in model.parameters())}}))
"""


@pytest.mark.parametrize("prune", [False, True], ids=["unpruned", "pruned"])
def test_save_then_reload_in_a_fresh_process_is_exact(base_dir, tmp_path, prune):
    model = trained(base_dir, prune)
    x = inputs()
    mean, probs = reference(model, x)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(x, tmp_path / "x.pt")
    args = ", ".join(repr(str(p)) for p in (base_dir, tmp_path / "adapter", tmp_path / "x.pt"))
    got = run_fresh(RELOAD.format(args=args))
    assert got["ranks"] == [m.r for m in lrvd_modules(model).values()] == ([4, 3, 2, 1] if prune else [4] * 4)
    assert torch.allclose(torch.tensor(got["mean"]), mean, atol=1e-6, rtol=0)
    assert torch.equal(torch.tensor(got["probs"]).argmax(-1), probs.argmax(-1))
    assert torch.allclose(torch.tensor(got["probs"]), probs, atol=1e-6, rtol=0)  # the same draws, too
    assert not torch.allclose(probs, torch.softmax(mean, -1), atol=1e-3)  # the draws do move the output
    assert got["training"] is False and got["grads"] is False  # peft's default: an inference model


def test_the_folder_is_a_peft_adapter_of_the_posterior_mean(base_dir, tmp_path):
    """Plain peft (no lrvd) loads the folder: the posterior-mean LoRA with the pruned rank pattern."""
    model = trained(base_dir, prune=True)
    x = inputs()
    mean, _ = reference(model, x)
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "lrvd_adapter.json",
        "lrvd_posterior.safetensors",
    ]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["rank_pattern"].values()) == [1, 2, 3, 4]
    assert config["modules_to_save"] == ["classifier"]
    from safetensors.torch import load_file

    posterior = load_file(str(tmp_path / "adapter" / "lrvd_posterior.safetensors"))
    assert sorted(v.numel() for k, v in posterior.items() if k.endswith("rank_log_sigma2")) == [1, 2, 3, 4]
    torch.save(x, tmp_path / "x.pt")
    got = run_fresh(
        f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification
        x = torch.load({str(tmp_path / "x.pt")!r})
        model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained({str(base_dir)!r}),
                                          {str(tmp_path / "adapter")!r}).eval()
        with torch.no_grad():
            print(json.dumps({{"logits": model(**x).logits.tolist()}}))
        """
    )
    assert torch.allclose(torch.tensor(got["logits"]), mean, atol=1e-5, rtol=0)


def test_merge_and_unload_returns_the_plain_model_with_the_mean_merged(base_dir):
    from transformers import BertForSequenceClassification

    model = trained(base_dir, prune=True)
    x = inputs()
    mean, _ = reference(model, x)
    plain = model.merge_and_unload()
    assert type(plain) is BertForSequenceClassification and not lrvd_modules(plain)
    assert not isinstance(plain, lrvd.BayesLoraModel)
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, mean, atol=1e-5, rtol=0)
    base = base_model(base_dir).eval()
    with torch.no_grad():
        assert not torch.allclose(base(**x).logits, mean, atol=1e-3)


def test_disable_adapter_runs_the_base_weights_and_restores_the_adapters(base_dir):
    model = trained(base_dir, prune=False).eval()
    base = base_model(base_dir).eval()
    base.classifier.load_state_dict(model.classifier.state_dict())  # the head is trained in place: kept
    x = inputs()
    with torch.no_grad():
        before = model(**x).logits
        with model.disable_adapter():
            off = model(**x).logits
            assert not lrvd_modules(model)
        after = model(**x).logits
        torch.testing.assert_close(off, base(**x).logits)
    torch.testing.assert_close(after, before)
    assert not torch.allclose(off, before, atol=1e-3)


def test_print_trainable_parameters_is_peft_s_line(base_dir, capsys):
    model = trained(base_dir, prune=False)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 4 * (4 * 32 + 32 * 4 + 4) + (32 * 2 + 2)
    model.print_trainable_parameters()
    assert capsys.readouterr().out == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}\n"
    )


def test_a_full_model_save_refuses_in_one_line(base_dir, tmp_path):
    model = trained(base_dir, prune=False)
    with pytest.raises(lrvd.LRVDError) as err:
        model.save_pretrained(tmp_path / "full", full_model=True)
    assert "\n" not in str(err.value) and "merge_and_unload" in str(err.value)


def test_transformers_from_pretrained_on_the_folder_gives_the_posterior_mean_not_a_fresh_head(base_dir, tmp_path):
    """What the issue saw as silent re-initialisation: transformers reads the adapter folder as peft's."""
    from transformers import AutoModelForSequenceClassification

    model = trained(base_dir, prune=False)
    x = inputs()
    mean, _ = reference(model, x)
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)  # a from-config base has no hub name
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, mean, atol=1e-5, rtol=0)


# -- bad input ---------------------------------------------------------------------------------------
def test_a_pruned_state_dict_on_fresh_layers_is_refused_in_one_line(base_dir):
    state = trained(base_dir, prune=True).state_dict()
    fresh = lrvd.get_bayeslora_model(base_model(base_dir), lrvd.BayesLoraConfig(r=4, modules_to_save=["classifier"]))
    with pytest.raises(lrvd.LRVDError) as err:
        fresh.load_state_dict(state)
    assert "\n" not in str(err.value) and "rank 3" in str(err.value) and "from_pretrained" in str(err.value)


def test_an_adapter_of_another_hidden_size_or_architecture_is_one_line(base_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

    trained(base_dir, prune=True).save_pretrained(tmp_path / "adapter")
    wider = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )
    with pytest.raises(lrvd.LRVDError) as err:
        lrvd.BayesLoraModel.from_pretrained(wider, tmp_path / "adapter")
    assert "\n" not in str(err.value) and "hidden size" in str(err.value)
    assert not lrvd_modules(wider)  # refused before any change
    other = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    )
    with pytest.raises(lrvd.LRVDError) as err:
        lrvd.BayesLoraModel.from_pretrained(other, tmp_path / "adapter")
    assert str(err.value).endswith(
        "was saved on a BertForSequenceClassification, not a DistilBertForSequenceClassification"
    )


def test_from_pretrained_needs_the_base_model_first(tmp_path):
    with pytest.raises(lrvd.LRVDError, match="base model and the adapter folder"):
        lrvd.BayesLoraModel.from_pretrained(str(tmp_path))
