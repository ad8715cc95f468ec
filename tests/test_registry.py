"""The generic registry: clashes refused, typos get suggestions, re-imports tolerated."""
import pytest

import methods
from methods import Registry, RegistryError


def test_register_and_get():
    r = Registry("thing")
    r.register("alpha", 1)

    @r.register("beta")
    def beta():
        return 2

    assert r.get("alpha") == 1 and r.get("beta") is beta and r.names() == ["alpha", "beta"]


def test_clash_is_refused_naming_both():
    r = Registry("thing")

    class A: ...

    class B: ...

    r.register("x", A)
    r.register("x", A)  # the same object again is fine (a module imported twice)
    with pytest.raises(RegistryError, match=r"'x' is already registered to .*A.*B"):
        r.register("x", B)


def test_typo_suggests_close_names():
    r = Registry("launcher")
    for n in ("inline", "local", "slurm"):
        r.register(n, n)
    with pytest.raises(RegistryError) as e:
        r.get("slrum")
    assert "Did you mean 'slurm'" in str(e.value) and "Available: inline, local, slurm" in str(e.value)


def test_method_register_rejects_non_methods():
    with pytest.raises(TypeError, match="PreferenceMethod subclass"):
        methods.register("_not_a_method")(object)


def test_builtin_method_name_cannot_be_taken():
    class Fake(methods.PreferenceMethod):
        def loss(self, b):  # pragma: no cover
            raise AssertionError

    with pytest.raises(RegistryError, match="already registered"):
        methods.available()
        methods.register("dpo")(Fake)


def test_entry_point_group_is_loaded(monkeypatch, tmp_path):
    """Installed packages register methods through the entry-point group harness.methods:
    the module is only imported (and so only registers) when the group is discovered."""
    import importlib.metadata as md

    (tmp_path / "_fake_ep_pkg.py").write_text(
        "import methods\n@methods.register('_ep_method')\nclass M(methods.PreferenceMethod):\n"
        "    \"\"\"An entry-point method.\"\"\"\n    def loss(self, b):\n        raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "_ep_method" not in methods.available()
    ep = md.EntryPoint(name="ep", value="_fake_ep_pkg", group="harness.methods")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if group == "harness.methods" else [])
    monkeypatch.setattr(methods, "_discovered", False)
    assert "_ep_method" in methods.available()
