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
    monkeypatch.setattr(METHODS, "_loaded", dict(METHODS._loaded))


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


def test_registering_a_class_that_is_not_a_method_is_refused(clean_registry):
    class Half:  # has some hooks, not all
        name = "half"

        def attach(self, model, spec, plan):
            return model

    with pytest.raises(LRVDError) as err:
        METHODS.register("half")(Half)
    message = str(err.value)
    assert "\n" not in message and "'half'" in message and "does not implement the AdapterMethod protocol" in message
    assert "predict_proba" in message and "adaptive_rank" in message and "attach," not in message
    with pytest.raises(LRVDError, match="must be a class"):
        METHODS.register("a-function")(lambda: None)
    assert "half" not in list_methods() and "a-function" not in list_methods()


def test_duplicate_name_is_refused_with_one_line(clean_registry):
    @METHODS.register("toy-dup")
    class First(MethodBase):
        name = "toy-dup"

    class Second(MethodBase):
        name = "toy-dup"

    with pytest.raises(
        LRVDError, match=r"^method 'toy-dup' is already registered \(by .*First\); choose another name$"
    ):
        METHODS.register("toy-dup")(Second)
    assert get_method("toy-dup") is First
    assert METHODS.register("toy-dup")(First) is First  # the same object again is a no-op
    with pytest.raises(LRVDError, match=r"'lora' is already registered \(entry point lrvd_baselines.lora:LoRA\)"):
        METHODS.register("lora")(Second)
    from lrvd_baselines.lora import LoRA

    assert get_method("lora") is LoRA


def _plugin(tmp_path, monkeypatch, module: str, source: str, entry_points: str) -> None:
    """A fake installed distribution: ``module.py`` plus a dist-info with ``entry_points.txt``."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = tmp_path / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_entry_point_that_is_not_a_method_is_refused_on_load(tmp_path, monkeypatch, clean_registry):
    _plugin(
        tmp_path,
        monkeypatch,
        "bad_lrvd_plugin",
        """
        class NotAMethod:
            name = "not-a-method"
    """,
        "[lrvd.methods]\nnot-a-method = bad_lrvd_plugin:NotAMethod\nclash = bad_lrvd_plugin:NotAMethod\n",
    )
    assert "not-a-method" in list_methods()  # listing does not import
    with pytest.raises(LRVDError, match=r"'not-a-method' \(bad_lrvd_plugin:NotAMethod\) does not implement"):
        get_method("not-a-method")
    monkeypatch.delitem(sys.modules, "bad_lrvd_plugin", raising=False)


def test_two_packages_declaring_one_name_are_refused(tmp_path, monkeypatch, clean_registry):
    _plugin(
        tmp_path,
        monkeypatch,
        "clash_lrvd_plugin",
        """
        from lrvd.protocol import MethodBase

        class Clash(MethodBase):
            name = "bayeslora"
    """,
        "[lrvd.methods]\nbayeslora = clash_lrvd_plugin:Clash\n",
    )
    METHODS._loaded.pop("bayeslora", None)
    with pytest.raises(
        LRVDError,
        match=r"'bayeslora' is declared by several installed packages "
        r"\(clash_lrvd_plugin:Clash, lrvd.methods.bayeslora:BayesLoRA\)",
    ):
        get_method("bayeslora")
    monkeypatch.delitem(sys.modules, "clash_lrvd_plugin", raising=False)


def test_capabilities_are_read_from_the_class():
    from lrvd.protocol import CAPABILITIES, capabilities
    from lrvd.registry import method_capability

    assert method_capability("bayeslora", "adaptive_rank") and not method_capability("lora", "adaptive_rank")
    assert not method_capability("no-such-method", "adaptive_rank")  # a run of an uninstalled plugin
    with pytest.raises(LRVDError, match="unknown method capability 'adaptive'"):
        method_capability("bayeslora", "adaptive")
    assert set(capabilities(get_method("lora"))) == set(CAPABILITIES)
    assert not any(capabilities(get_method("lora")).values())


def test_third_party_entry_point_is_discovered_without_installing(tmp_path, monkeypatch, clean_registry):
    """A package that declares ``[project.entry-points."lrvd.methods"]`` is found through its
    ``*.dist-info/entry_points.txt`` on sys.path — exactly what ``pip install`` would leave behind."""
    (tmp_path / "fake_lrvd_plugin.py").write_text(
        textwrap.dedent('''
        from lrvd.protocol import MethodBase

        class FakeMethod(MethodBase):
            """A third-party adapter method."""
            name = "fake-method"
    ''')
    )
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
