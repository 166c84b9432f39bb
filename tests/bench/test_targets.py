"""Adapter targets by architecture, and the pre-flight check that refuses a list matching nothing.

The tiny checkpoints here are folders holding a ``config.json`` and nothing else: the check must
read the module names from the config alone (it builds the model on the meta device).
"""

from __future__ import annotations

import re

import pytest
from transformers import BertConfig, DistilBertConfig, LlamaConfig

from lrvd_bench import cli
from lrvd_bench.config import config_from_dict, load_config
from lrvd_bench.errors import BenchError
from lrvd_bench.sweep.checks import check_target_modules, skeleton_modules
from lrvd_bench.targets import BY_ARCHITECTURE_HELP, architecture_targets

LLAMA = LlamaConfig(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, pad_token_id=0
)
BERT = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
DISTILBERT = DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32)


def config_only(tmp_path, config, name):
    """A checkpoint folder with a config and no weights."""
    folder = tmp_path / name
    config.save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    return str(folder)


def sweep(model, **adapter):
    return config_from_dict({"model": model, "methods": "lora", "adapter": adapter or None})


def test_an_adapter_section_without_target_modules_means_by_architecture():
    assert sweep("minilm").adapter.target_modules == ["auto"]
    assert sweep("minilm", r=4).adapter.target_modules == ["auto"]
    assert config_from_dict({"methods": "lora"}).adapter.target_modules == ["auto"]
    assert sweep("minilm", target_modules="q_lin").adapter.target_modules == ["q_lin"]
    assert load_config(None, {"adapter.target_modules": "query,key"}).adapter.target_modules == ["query", "key"]


def test_auto_resolves_to_the_papers_modules_per_architecture(tmp_path):
    llama = sweep(config_only(tmp_path, LLAMA, "llama"))
    check_target_modules(llama)
    assert llama.adapter.target_modules == ["q_proj", "v_proj"]  # BLoB's LLaMA targets (docs/methods.md)
    bert = sweep(config_only(tmp_path, BERT, "bert"))
    check_target_modules(bert)
    assert bert.adapter.target_modules == ["query", "value"]
    minilm = sweep("minilm")  # the bundled real checkpoint: a BERT
    check_target_modules(minilm)
    assert minilm.adapter.target_modules == ["query", "value"]


def test_the_skeleton_lists_every_linear_module_without_weights(tmp_path):
    model_type, names = skeleton_modules(config_only(tmp_path, LLAMA, "llama"), "arc-e")
    assert model_type == "llama"
    per_layer = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert len(names) == 2 * len(per_layer) + 1 and names[-1] == "lm_head"
    assert sorted({n.rpartition(".")[2] for n in names}) == sorted([*per_layer, "lm_head"])


def test_a_target_list_that_matches_nothing_is_refused_naming_the_linear_modules(tmp_path):
    llama = sweep(config_only(tmp_path, LLAMA, "llama"), target_modules=["query", "value"])
    with pytest.raises(BenchError) as err:
        check_target_modules(llama)
    message = str(err.value)
    assert "query,value matches no linear module" in message
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head" in message
    explicit = sweep(config_only(tmp_path, LLAMA, "llama2"), target_modules=["k_proj", "nonexistent"])
    check_target_modules(explicit)  # one match is enough, as in peft
    assert explicit.adapter.target_modules == ["k_proj", "nonexistent"]


def test_auto_on_a_model_type_peft_has_no_default_for_names_the_candidates(tmp_path):
    distil = sweep(config_only(tmp_path, DISTILBERT, "distil"))
    with pytest.raises(BenchError, match=r"no default for model type 'distilbert'.*q_lin, k_lin, v_lin"):
        check_target_modules(distil)


def test_the_help_examples_are_peft_s_defaults():
    examples = re.search(r"model type \((.*?)\)", BY_ARCHITECTURE_HELP).group(1)
    for group in examples.split("; "):
        types, targets = group.split(": ")
        for model_type in types.split(", "):
            assert architecture_targets(model_type) == targets.split(","), model_type
    assert architecture_targets("no-such-type") is None


def test_bench_run_refuses_unmatched_targets_with_exit_2_before_ray(capsys, tmp_path, monkeypatch):
    import ray

    ray.shutdown()  # an earlier test's session must not stand in for this run's start
    monkeypatch.chdir(tmp_path)
    model = config_only(tmp_path, LLAMA, "llama")
    out = tmp_path / "run"
    argv = ["run", "--model", model, "--task", "arc-e", "--max-steps", "5", "--target-modules", "nonexistent"]
    code = cli.main([*argv, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nonexistent matches no linear module" in err and "q_proj" in err
    assert not ray.is_initialized() and not out.exists()


def test_bench_run_help_states_the_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert re.search(r"adapter\.target_modules +list\[str\] +auto ", help_text)
    assert BY_ARCHITECTURE_HELP in help_text
