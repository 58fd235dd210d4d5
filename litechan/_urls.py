"""Broker URLs as they may be shown (reprs, error messages, log events): never with a password."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["redact"]


def redact(url: str | SplitResult) -> str:
    """*url* with its password, if it has one, replaced by ``***``; a URL that cannot be
    parsed is not shown at all (its password could not be found to hide)."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else url
        password = parts.password
    except ValueError:
        return "<a malformed URL>"
    if password is None:
        return url if isinstance(url, str) else urlunsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
