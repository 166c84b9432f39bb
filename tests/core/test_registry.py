"""The method registry: built-ins, helpful errors, and third-party discovery via entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from lrvd import LRVDError, MethodBase, get_method, list_methods
from lrvd.registry import METHODS


@pytest.fixture
def clean_registry(monkeypatch):
    """Isolate in-process registrations and the loaded-object cache from other tests."""
    monkeypatch.setattr(METHODS, "_local", dict(METHODS._local))


def test_bayeslora_is_registered():
    from lrvd.methods.bayeslora import BayesLoRA

    assert "bayeslora" in list_methods()
    assert get_method("bayeslora") is BayesLoRA
    assert METHODS.entry_point_value("bayeslora") == "lrvd.methods.bayeslora:BayesLoRA"


def test_unknown_method_error_lists_valid_names():
    with pytest.raises(LRVDError, match=r"unknown method 'bayes-lora'.*valid choices:.*bayeslora"):
        get_method("bayes-lora")


def test_in_process_registration(clean_registry):
    @METHODS.register("toy-method")
    class ToyMethod(MethodBase):
        name = "toy-method"

    assert "toy-method" in list_methods()
    assert get_method("toy-method") is ToyMethod


def test_third_party_entry_point_is_discovered_without_installing(tmp_path, monkeypatch, clean_registry):
    """A package that declares ``[project.entry-points."lrvd.methods"]`` is found through its
    ``*.dist-info/entry_points.txt`` on sys.path — exactly what ``pip install`` would leave behind."""
    (tmp_path / "fake_lrvd_plugin.py").write_text(textwrap.dedent('''
        from lrvd.protocol import MethodBase

        class FakeMethod(MethodBase):
            """A third-party adapter method."""
            name = "fake-method"
    '''))
    dist_info = tmp_path / "fake_lrvd_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lrvd-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[lrvd.methods]\nfake-method = fake_lrvd_plugin:FakeMethod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_lrvd_plugin", raising=False)

    assert "fake-method" in list_methods()
    assert "fake_lrvd_plugin" not in sys.modules  # listing does not import the plugin
    cls = get_method("fake-method")
    assert cls.__name__ == "FakeMethod" and issubclass(cls, MethodBase)
    assert METHODS.describe("fake-method") == "A third-party adapter method."
    monkeypatch.delitem(sys.modules, "fake_lrvd_plugin", raising=False)
