"""The public face of litechan matches its ``__all__``, and every public name is documented.

Users import from ``litechan`` (and ``litechan.testing``) only, so a name missing from ``__all__``,
a stale entry in it, or an undocumented export is a bug in the public API.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

PUBLIC_MODULES = [
    "litechan",
    "litechan.backends",
    "litechan.testing",
    "litechan.testing.pytest_plugin",
]
API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def public_names(module: ModuleType) -> set[str]:
    """Names a user sees on *module*: not underscored, not submodules, not ``__future__`` flags."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and type(value).__module__ != "__future__"  # `from __future__ import annotations`
    }


def exported(module_name: str) -> list[str]:
    """Return ``__all__`` of *module_name* (empty if the module cannot be imported yet)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return list(getattr(module, "__all__", []))


def documentable(module_name: str, name: str) -> bool:
    """Whether the export is a class or function, which carries its own docstring."""
    obj = getattr(importlib.import_module(module_name), name)
    return inspect.isclass(obj) or inspect.isroutine(obj)


ALL_EXPORTS = [(module, name) for module in PUBLIC_MODULES for name in exported(module)]
IDS = [f"{module}.{name}" for module, name in ALL_EXPORTS]
# Type aliases and constants have no docstring of their own; docs/api.md must describe them.
DOCUMENTABLE = [(module, name) for module, name in ALL_EXPORTS if documentable(module, name)]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_matches_public_attributes(module_name: str) -> None:
    """``__all__`` lists exactly the public non-module attributes of the module, once each."""
    module = importlib.import_module(module_name)
    listed = module.__all__
    assert len(listed) == len(set(listed)), "duplicates in __all__"
    missing = sorted(set(listed) - set(vars(module)))
    assert not missing, f"in __all__ but not defined: {missing}"
    unlisted = sorted(public_names(module) - set(listed))
    assert not unlisted, f"public but not in __all__ (add them, or prefix with _): {unlisted}"


@pytest.mark.parametrize(
    ("module_name", "name"), DOCUMENTABLE, ids=[f"{m}.{n}" for m, n in DOCUMENTABLE]
)
def test_public_name_has_versionadded(module_name: str, name: str) -> None:
    """Every exported class and function has a docstring saying in which version it was added."""
    obj = getattr(importlib.import_module(module_name), name)
    # obj.__doc__, not inspect.getdoc(): the docstring must be the object's own, not inherited.
    doc = obj.__doc__ or ""
    assert "versionadded" in doc, f"{module_name}.{name}'s docstring has no '.. versionadded::'"


@pytest.mark.parametrize(("module_name", "name"), ALL_EXPORTS, ids=IDS)
def test_public_name_is_in_api_reference(module_name: str, name: str) -> None:
    """Every exported name is described in docs/api.md, so the reference covers the whole API."""
    text = API_DOC.read_text(encoding="utf-8")
    assert re.search(rf"\b{re.escape(name)}\b", text), f"{module_name}.{name} not in docs/api.md"
