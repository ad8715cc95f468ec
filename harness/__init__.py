"""A harness to train and compare preference-optimization methods on one shared core.

Importing ``harness`` makes the name ``methods`` mean this project's method registry (the
``methods/`` package next to ``harness/``), whatever the working directory holds. ``python -m
harness`` puts the working directory first on ``sys.path``, and research folders often have
their own ``methods.py`` or ``methods/``: a plain ``import methods`` would find that one and the
CLI would fail with ``module 'methods' has no attribute 'available'``. Plugins keep writing
``import methods`` (DESIGN.md's method contract): they get the module pinned here.
"""
__version__ = "0.1.0"


def _pin_methods() -> None:
    """Load the project's ``methods`` package from its own folder into ``sys.modules`` (once).

    A ``methods`` module already imported from elsewhere (a user's own, imported before the
    harness in the same process) is replaced, with a warning naming its file: the harness
    cannot work with another registry, and the user's module stays bound where it was
    imported."""
    import importlib.util
    import sys
    from pathlib import Path

    pkg = Path(__file__).resolve().parent.parent / "methods"
    if not (pkg / "__init__.py").is_file():  # an unusual install: let the import system find it
        return
    have = sys.modules.get("methods")
    if have is not None:
        where = getattr(have, "__file__", None)
        if where and Path(where).resolve().parent == pkg:
            return
        print(f"warning: a different module named 'methods' ({where or have!r}) was imported before "
              f"the harness; the harness uses its own method registry ({pkg}) from now on",
              file=sys.stderr)
        for name in [n for n in sys.modules if n == "methods" or n.startswith("methods.")]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location("methods", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["methods"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["methods"]
        raise


_pin_methods()
