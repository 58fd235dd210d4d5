"""Parsing of ``redis://``, ``rediss://`` and ``unix://`` broker URLs.

The URL carries what redis-py understands (host, port, database, user, password, TLS settings)
plus litechan's own options in the query string; the latter are removed before the rest is given
to redis-py, and each is validated here so that a typo is an :class:`InvalidArgument` at
:func:`litechan.connect`, not a surprise at the first publish.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, parse_qsl, urlencode, urlunsplit

import attrs

from ..._errors import InvalidArgument
from ..._names import check_name

__all__ = ["RedisOptions", "parse_url"]

_SCHEMES: Final = ("redis", "rediss", "unix")


@attrs.frozen
class RedisOptions:
    """What a Redis broker URL asks for; see docs/api.md for each option."""

    #: The URL handed to redis-py (litechan's own query options removed).
    client_url: str
    #: Prefix of every key and channel litechan uses on this server (isolation, G10).
    namespace: str = "litechan"
    pool_size: int = 16
    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    #: How long a worker owns a partition without renewing it; a crashed worker's partitions
    #: move to the survivors within about this time.
    lease: float = 10.0
    #: "async": ack() returns once the ack is queued for the next batch, which leaves at once (a
    #: sequential reader is not held up by the round trip; a crash may redeliver what was
    #: acked in the last moment, as with RabbitMQ or NATS acks); "sync": ack() returns once the
    #: ack is on the server (an acked message is never redelivered).
    acks: str = "async"
    #: How long a call (publish, send, subscribe, ...) keeps waiting for a connection while the
    #: server is unreachable before it raises BrokerUnavailable.
    retry: float = 5.0


_FLOATS: Final = {
    "connect_timeout": (0.001, 3600.0),
    "socket_timeout": (0.001, 3600.0),
    "lease": (0.2, 3600.0),
    "retry": (0.0, 3600.0),
}


def parse_url(url: SplitResult) -> RedisOptions:
    """Split *url* into redis-py's URL and litechan's options, validating both."""
    if url.scheme not in _SCHEMES:  # the registry routes only these schemes here
        raise InvalidArgument(f"not a Redis URL: {url.geturl()!r}")
    if url.fragment:
        raise InvalidArgument(f"a Redis URL takes no #fragment: {url.geturl()!r}")
    if url.scheme != "unix" and not url.hostname:
        raise InvalidArgument(f"a {url.scheme}:// URL needs a host: {url.geturl()!r}")
    if url.scheme == "unix" and not url.path:
        raise InvalidArgument(f"a unix:// URL needs a socket path: {url.geturl()!r}")
    values: dict[str, object] = {}
    passthrough: list[tuple[str, str]] = []
    for name, raw in parse_qsl(url.query, keep_blank_values=True, strict_parsing=False):
        if name == "namespace":
            values[name] = check_name(raw, "namespace")
        elif name == "acks":
            if raw not in ("sync", "async"):
                raise InvalidArgument(f"Redis URL option acks must be sync or async, got {raw!r}")
            values[name] = raw
        elif name == "pool_size":
            values[name] = _int(name, raw, 1, 10_000)
        elif name in _FLOATS:
            low, high = _FLOATS[name]
            values[name] = _float(name, raw, low, high)
        elif name in _REDIS_PY_QUERY:
            passthrough.append((name, raw))
        else:
            known = sorted([*attrs.fields_dict(RedisOptions), *_REDIS_PY_QUERY])
            known.remove("client_url")
            raise InvalidArgument(
                f"unknown option {name!r} in Redis URL; known options: {', '.join(known)}"
            )
    client_url = urlunsplit((url.scheme, url.netloc, url.path, urlencode(passthrough), ""))
    return RedisOptions(client_url=client_url, **values)  # type: ignore[arg-type]


# Query options redis-py itself reads from a URL, passed through untouched.
_REDIS_PY_QUERY: Final = frozenset(
    {
        "db",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "health_check_interval",
        "client_name",
    }
)


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidArgument(f"Redis URL option {name} must be an int from {low} to {high}")
    return value


def _float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidArgument(
            f"Redis URL option {name} must be a number of seconds from {low} to {high}"
        )
    return value
