"""ExperimentConfig: YAML + CLI overrides, one-line errors, expansion into hashed TrialSpecs."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from lrvd_bench.config import ExperimentConfig, TrialSpec, load_config, parse_set
from lrvd_bench.errors import BenchError, LRVDError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_cli_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path, "methods: lora\ntask: arc-c\nseeds: [0, 1, 2]\ntrain:\n  lr: 1e-3\n  max_steps: 50\n")
    config = load_config(path, {"seeds": [7], "train.max_steps": 5, **parse_set(["train.lr=5e-4", "adapter.r=4"])})
    assert config.methods == ["lora"] and config.tasks == ["arc-c"]
    assert config.seeds == [7] and config.train.max_steps == 5
    assert config.train.lr == 5e-4 and config.adapter.r == 4


def test_yaml_reads_1e_minus_3_as_a_number(tmp_path):
    config = load_config(
        write(tmp_path, "methods: lora\ntrain:\n  lr: 1e-3\nmethod_params:\n  bayeslora: {kl_scale: 1e-6}\n")
    )
    assert config.train.lr == pytest.approx(1e-3)
    assert config.method_params["bayeslora"]["kl_scale"] == pytest.approx(1e-6)


def test_unknown_key_error_names_it_and_the_valid_keys(tmp_path):
    with pytest.raises(BenchError) as err:
        load_config(write(tmp_path, "methods: lora\nlearning_rate: 0.1\n"))
    message = str(err.value)
    assert "'learning_rate'" in message and "c.yaml" in message and "train" in message and "\n" not in message


def test_unknown_nested_key_names_the_dotted_path(tmp_path):
    with pytest.raises(BenchError, match=r"'train\.lrr'.*train\.lr"):
        load_config(write(tmp_path, "train:\n  lrr: 0.1\n"))


def test_malformed_yaml_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(BenchError) as err:
        load_config(write(tmp_path, "methods: [lora\ntrain: {\n"))
    assert "malformed YAML in" in str(err.value) and "c.yaml" in str(err.value) and "\n" not in str(err.value)


def test_unknown_method_and_task_list_the_valid_names():
    with pytest.raises(LRVDError, match=r"unknown method 'nope'.*lora"):
        load_config(None, {"methods": "lora,nope"})
    with pytest.raises(LRVDError, match=r"unknown task 'arc-x'.*arc-c.*cola"):
        load_config(None, {"tasks": "arc-x"})


def test_bad_values_are_rejected_at_the_edge():
    with pytest.raises(BenchError, match="limit_train"):
        load_config(None, {"limit_train": "many"})
    with pytest.raises(LRVDError, match="device"):
        load_config(None, {"device": "tpu"})
    with pytest.raises(BenchError, match="search_space"):
        load_config(None, {"search_space": {"train.lr": {"gaussian": [0, 1]}}})


def test_all_expands_to_every_registered_method():
    from lrvd.registry import list_methods

    assert ExperimentConfig(methods="all").methods == list_methods()


def test_expansion_is_method_by_task_by_seed_by_grid_point():
    config = load_config(
        None,
        {
            "methods": "lora,bayeslora",
            "tasks": "arc-e,cola",
            "seeds": [0, 1],
            "search_space": {"adapter.r": {"grid_search": [4, 8]}, "train.lr": {"loguniform": [1e-4, 1e-2]}},
        },
    )
    specs = config.expand()
    assert len(specs) == 2 * 2 * 2 * 2
    assert {s.adapter["r"] for s in specs} == {4, 8}
    assert all(s.train["seed"] == s.seed for s in specs)
    assert len({s.trial_id for s in specs}) == len(specs)
    assert config.random_space() == {"train.lr": {"loguniform": [1e-4, 1e-2]}}


def test_trial_spec_round_trips_and_its_hash_is_stable():
    spec = load_config(
        None, {"methods": "bayeslora", "tasks": "arc-e", "method_params": {"bayeslora": {"tau": 2.0}}}
    ).expand()[0]
    again = TrialSpec.from_dict(spec.to_dict())
    assert again == spec and again.config_hash == spec.config_hash
    assert spec.config_hash == TrialSpec.from_dict(dict(spec.to_dict(), device="cuda")).config_hash
    assert spec.with_overrides({"train.lr": 0.5}).config_hash != spec.config_hash
    assert spec.method_params == {"tau": 2.0}
    # A spec's hash is a pure function of its content: fixed here so that an accidental change shows.
    fixed = TrialSpec(method="lora", task="arc-e", model="minilm", seed=0, adapter={"r": 8}, train={"lr": 0.001})
    assert fixed.config_hash == TrialSpec.from_dict(fixed.to_dict()).config_hash
    assert len(fixed.config_hash) == 12 and fixed.trial_id == f"lora-arc-e-s0-{fixed.config_hash[:8]}"


def test_search_point_applies_only_to_its_method():
    spec = load_config(None, {"methods": "lora", "tasks": "arc-e"}).expand()[0]
    moved = spec.with_overrides({"method_params.bayeslora.tau": 2.0, "max_length": 32})
    assert moved.method_params == {} and moved.max_length == 32
    assert moved.search_point == {"method_params.bayeslora.tau": 2.0, "max_length": 32}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "configs" / name)
    assert config.expand()


def test_packaged_quickstart_matches_the_repo_copy():
    import lrvd_bench

    packaged = Path(lrvd_bench.__file__).parent / "configs" / "quickstart.yaml"
    assert filecmp.cmp(packaged, REPO / "configs" / "quickstart.yaml", shallow=False)
