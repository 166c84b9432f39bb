"""Per-trial settings are declared once (ExperimentConfig fields marked ``per_trial``) and every trial carries them."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from lrvd_bench.config import PER_TRIAL, ExperimentConfig, TrialSpec

# a value other than the default for every per-trial setting: a new setting must be added here
NON_DEFAULT = {
    "data_dir": "/data",
    "limit_train": 7,
    "limit_eval": 5,
    "eval_tasks": ["arc-c", "arc-e"],
    "validation_fraction": 0.25,
    "split_seed": 3,
    "max_length": 32,
    "eval_batch_size": 4,
    "n_samples": 2,
    "device": "cuda",
    "load_in_8bit": True,
    "save_adapter": False,
    "save_predictions": False,
}


def test_trial_spec_carries_exactly_the_per_trial_fields_with_their_defaults():
    config_fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    spec_fields = {f.name: f for f in dataclasses.fields(TrialSpec)}
    marked = [name for name, f in config_fields.items() if f.metadata.get("per_trial")]
    assert list(PER_TRIAL) == marked and set(NON_DEFAULT) == set(marked)
    for name in marked:
        assert spec_fields[name].default == config_fields[name].default
        assert spec_fields[name].metadata["help"] == config_fields[name].metadata["help"]
    shared = set(config_fields) & set(spec_fields)
    assert shared - set(marked) == {"model", "adapter", "train", "method_params"}  # nothing declared twice


def test_expand_copies_every_per_trial_setting_into_each_trial():
    config = ExperimentConfig(methods=["lora", "bayeslora"], tasks=["arc-e"], seeds=[0, 1], **NON_DEFAULT)
    specs = config.expand()
    assert len(specs) == 4
    for spec in specs:
        assert {name: getattr(spec, name) for name in PER_TRIAL} == NON_DEFAULT
    round_trip = TrialSpec.from_dict(specs[0].to_dict())
    assert round_trip == specs[0] and round_trip.config_hash == specs[0].config_hash


def test_trial_ids_are_unchanged_by_declaring_the_settings_once():
    """The hash covers the same canonical JSON as before (keys sorted), so old run folders still match."""
    spec = TrialSpec(method="lora", task="arc-e", model="m", seed=0, adapter={}, train={})
    assert spec.config_hash == "ab69613d6384"


def test_adapter_spec_is_a_deprecated_alias_of_adapter_config():
    import lrvd
    from lrvd import protocol

    with pytest.warns(DeprecationWarning, match="AdapterSpec is deprecated; use AdapterConfig"):
        assert lrvd.AdapterSpec is lrvd.AdapterConfig
    with pytest.warns(DeprecationWarning):
        assert protocol.AdapterSpec is protocol.AdapterConfig
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lrvd.AdapterConfig(r=4).scaling == 4.0
