"""Backend registry: URL scheme -> backend class, imported lazily.

A backend module is imported only when a URL with its scheme is opened, so ``memory://`` users
never import hiredis. An unknown scheme raises :class:`~litechan.UnknownBackend` listing the
known ones; a known one whose extra is not installed raises it saying what to install.
"""

from __future__ import annotations

import importlib
from typing import Final
from urllib.parse import SplitResult

from .._errors import UnknownBackend
from .base import Backend, BackendOptions

__all__ = ["known_schemes", "open_backend"]

#: scheme -> (module:class, the extra that installs what it imports, or "" if none)
_REGISTRY: Final[dict[str, tuple[str, str]]] = {
    "memory": ("litechan._backends.memory:MemoryBackend", ""),
    "redis": ("litechan._backends.redis:RedisBackend", "redis"),
    "rediss": ("litechan._backends.redis:RedisBackend", "redis"),
    "unix": ("litechan._backends.redis:RedisBackend", "redis"),
}


def known_schemes() -> list[str]:
    """The URL schemes litechan can open."""
    return sorted(_REGISTRY)


def open_backend(url: SplitResult, options: BackendOptions) -> Backend:
    """Instantiate the backend for *url*'s scheme (not started yet)."""
    entry = _REGISTRY.get(url.scheme)
    if entry is None:
        known = ", ".join(f"{scheme}://" for scheme in known_schemes())
        raise UnknownBackend(
            f"no backend for {url.scheme or '(no scheme)'}:// URLs; known: {known}"
        )
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
