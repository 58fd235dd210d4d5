"""Backend registry: URL scheme -> backend class, imported lazily.

A backend module is imported only when a URL with its scheme is opened, so ``memory://`` users
never import hiredis. Other packages add schemes through entry points of the group
``litechan.backends`` (see :mod:`litechan.backends`); they cannot take over a scheme litechan
serves itself. An unknown scheme raises :class:`~litechan.UnknownBackend` listing the known
ones; a known one whose extra is not installed raises it saying what to install.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Final
from urllib.parse import SplitResult

from .._errors import UnknownBackend
from .base import Backend, BackendOptions

__all__ = ["ENTRY_POINT_GROUP", "known_schemes", "open_backend"]

#: The entry-point group in which other packages register backends (name: the URL scheme).
ENTRY_POINT_GROUP: Final = "litechan.backends"

#: scheme -> (module:class, the extra that installs what it imports, or "" if none)
_REGISTRY: Final[dict[str, tuple[str, str]]] = {
    "memory": ("litechan._backends.memory:MemoryBackend", ""),
    "redis": ("litechan._backends.redis:RedisBackend", "redis"),
    "rediss": ("litechan._backends.redis:RedisBackend", "redis"),
    "unix": ("litechan._backends.redis:RedisBackend", "redis"),
    "redis+cluster": ("litechan._backends.redis:RedisBackend", "redis"),
    "rediss+cluster": ("litechan._backends.redis:RedisBackend", "redis"),
}


def known_schemes() -> list[str]:
    """The URL schemes litechan can open: its own and those installed packages register."""
    return sorted({*_REGISTRY, *_registered()})


def _registered() -> dict[str, EntryPoint]:
    """The backends installed packages register, by scheme (never one of litechan's own)."""
    return {
        entry.name: entry
        for entry in entry_points(group=ENTRY_POINT_GROUP)
        if entry.name not in _REGISTRY
    }


def open_backend(url: SplitResult, options: BackendOptions) -> Backend:
    """Instantiate the backend for *url*'s scheme (not started yet)."""
    entry = _REGISTRY.get(url.scheme)
    if entry is None:
        return _open_registered(url, options)
    target, extra = entry
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not extra or (exc.name or "").startswith("litechan"):
            raise
        raise UnknownBackend(
            f"{url.scheme}:// URLs need the {extra!r} extra, which is not installed (no module "
            f'named {exc.name!r}): pip install "litechan[{extra}]" (from a clone: '
            f'pip install -e ".[{extra}]")'
        ) from None
    backend_class = getattr(module, class_name)
    backend: Backend = backend_class(url, options)
    return backend


def _open_registered(url: SplitResult, options: BackendOptions) -> Backend:
    """Instantiate the backend an installed package registers for *url*'s scheme."""
    registered = _registered().get(url.scheme) if url.scheme else None
    if registered is None:
        known = ", ".join(f"{scheme}://" for scheme in known_schemes())
        raise UnknownBackend(
            f"no backend for {url.scheme or '(no scheme)'}:// URLs; known: {known}"
        )
    try:
        backend_class = registered.load()
    except Exception as exc:  # the package is broken or half installed: say which one
        raise UnknownBackend(
            f"the backend registered for {url.scheme}:// ({registered.value}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    backend: Backend = backend_class(url, options)
    return backend
