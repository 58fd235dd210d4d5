"""Parsing of ``redis://``, ``rediss://``, ``unix://`` and ``redis+cluster://`` broker URLs.

The URL says where the server is and how to reach it (host, port or socket path, database, user,
password, TLS settings, a client name) and carries litechan's own options in the query string.
Everything is validated here, so that a typo is an :class:`InvalidArgument` at
:func:`litechan.connect`, not a surprise at the first publish. The password is kept out of every
repr and message.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlunsplit

import attrs

from ..._errors import InvalidArgument
from ..._names import check_name
from ..._urls import redact

__all__ = ["Endpoint", "RedisOptions", "parse_url"]

_SCHEMES: Final = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
_MAX_DB: Final = 1_000_000


@attrs.frozen
class Endpoint:
    """Where the server is and how to open a connection to it."""

    host: str = ""
    port: int = 6379
    #: The unix socket's path (``unix://`` URLs), else "".
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: TLS (``rediss://``): the context, and the name the certificate must carry.
    tls: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)
    server_hostname: str | None = None
    client_name: str | None = None

    @property
    def address(self) -> str:
        """Where the server is, for messages and logs (never a credential)."""
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@attrs.frozen
class RedisOptions:
    """What a Redis broker URL asks for; see docs/api.md for each option."""

    endpoint: Endpoint
    #: The URL without litechan's options, for tools that use redis-py (the test kit's cleanup).
    client_url: str = attrs.field(repr=False)
    #: A cluster URL's nodes to discover the cluster from (``endpoint`` is the first); empty
    #: for a standalone server.
    seeds: tuple[Endpoint, ...] = ()
    #: Prefix of every key and channel litechan uses on this server (isolation, G10).
    namespace: str = "litechan"
    #: Accepted for compatibility and ignored: a broker opens one connection for commands and
    #: one for notes, whatever the pool size.
    pool_size: int = 16
    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    #: How long a worker owns a partition without renewing it; a crashed worker's partitions
    #: move to the survivors within about this time.
    lease: float = 10.0
    #: "async": ack() returns once the ack is queued for the next batch; "sync": ack() returns
    #: once the server answered the call that carried it (and raises what it refused).
    acks: str = "async"
    #: How long a call keeps waiting while the server is unreachable or not serving before it
    #: raises BrokerUnavailable; also the bound on closing a broker during an outage.
    retry: float = 5.0
    #: Slot partitions of each lite-topic parent: a batch's publishes (and acks) become one
    #: script call per partition. One suits a single server best (the fewest, largest calls);
    #: a cluster spreads a parent over its nodes by partition. Part of a parent's settings:
    #: every process of a namespace must use the same value.
    lite_partitions: int = 1
    #: The most publishes and sends a broker holds unanswered (queued, batched or on the wire).
    #: One more waits up to ``pending_wait`` seconds for room, then raises Overloaded: a load
    #: the server cannot keep up with is shed at the caller instead of queued without end.
    max_pending: int = 100_000
    #: How long a publish or send waits for room under ``max_pending`` before Overloaded.
    pending_wait: float = 1.0
    #: Replicas that must have a publish or send (WAIT) before it returns; 0: none.
    replicas: int = 0
    #: How long a batch's WAIT may take before its publishes and sends raise.
    replicas_wait: float = 1.0


_FLOATS: Final = {
    "connect_timeout": (0.001, 3600.0),
    "socket_timeout": (0.001, 3600.0),
    "lease": (0.2, 3600.0),
    "retry": (0.0, 3600.0),
    "pending_wait": (0.0, 3600.0),
    "replicas_wait": (0.001, 3600.0),
}

#: Connection options of the query string (the names redis-py uses for them).
_CONNECTION_QUERY: Final = frozenset(
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


def parse_url(url: SplitResult) -> RedisOptions:
    """Split *url* into where to connect and litechan's options, validating both."""
    if url.scheme not in _SCHEMES:  # the registry routes only these schemes here
        raise InvalidArgument(f"not a Redis URL: {_shown(url)}")
    if url.fragment:
        raise InvalidArgument(f"a Redis URL takes no #fragment: {_shown(url)}")
    if url.scheme in _CLUSTER_SCHEMES:
        return _parse_cluster_url(url)
    if url.scheme != "unix" and not url.hostname:
        raise InvalidArgument(f"a {url.scheme}:// URL needs a host: {_shown(url)}")
    if url.scheme == "unix" and not url.path:
        raise InvalidArgument(f"a unix:// URL needs a socket path: {_shown(url)}")
    values: dict[str, object] = {}
    connection: dict[str, str] = {}
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
        elif name == "lite_partitions":
            values[name] = _int(name, raw, 1, 1024)
        elif name == "max_pending":
            values[name] = _int(name, raw, 1, 1_000_000_000)
        elif name == "replicas":
            values[name] = _int(name, raw, 0, 100)
        elif name in _FLOATS:
            low, high = _FLOATS[name]
            values[name] = _float(name, raw, low, high)
        elif name in _CONNECTION_QUERY:
            connection[name] = raw
            passthrough.append((name, raw))
        else:
            known = sorted([*_LITECHAN_QUERY, *_CONNECTION_QUERY])
            raise InvalidArgument(
                f"unknown option {name!r} in Redis URL; known options: {', '.join(known)}"
            )
    replicas_wait = values.get("replicas_wait", 1.0)
    socket_timeout = values.get("socket_timeout", 10.0)
    if values.get("replicas") and replicas_wait >= socket_timeout:  # type: ignore[operator]
        raise InvalidArgument(
            f"Redis URL option replicas_wait ({replicas_wait} s) must be shorter than "
            f"socket_timeout ({socket_timeout} s): a WAIT longer than it reads as a dead link"
        )
    endpoint = _endpoint(url, connection)
    client_url = urlunsplit((url.scheme, url.netloc, url.path, urlencode(passthrough), ""))
    return RedisOptions(endpoint=endpoint, client_url=client_url, **values)  # type: ignore[arg-type]


#: litechan's own query options: the fields of RedisOptions but the parsed connection.
_LITECHAN_QUERY: Final = tuple(
    name
    for name in attrs.fields_dict(RedisOptions)
    if name not in ("endpoint", "client_url", "seeds")
)


def _parse_cluster_url(url: SplitResult) -> RedisOptions:
    """``redis+cluster://[user:password@]host:port,host:port[/]?options``: the nodes to
    discover the cluster from, one set of credentials and options for every node."""
    plain = url.scheme.removesuffix("+cluster")
    userinfo, _, hosts = url.netloc.rpartition("@")
    if url.path not in ("", "/", "/0"):
        raise InvalidArgument(
            f"a Redis Cluster has one database (0): the URL's path must be / or /0, "
            f"got {_shown(url)}"
        )
    names = hosts.split(",")
    if not names or not all(names):
        raise InvalidArgument(
            f"a {url.scheme}:// URL needs host:port[,host:port...]: {_shown(url)}"
        )
    seeds_options = [
        parse_url(
            url._replace(
                scheme=plain,
                netloc=f"{userinfo}@{name}" if userinfo else name,
                path="/0",
                query=url.query,
            )
        )
        for name in names
    ]
    first = seeds_options[0]
    if first.endpoint.db != 0:
        raise InvalidArgument("a Redis Cluster has one database (0): drop the db option")
    return attrs.evolve(
        first,
        client_url=urlunsplit((url.scheme, url.netloc, "/", "", "")),
        seeds=tuple(options.endpoint for options in seeds_options),
    )


def _endpoint(url: SplitResult, query: dict[str, str]) -> Endpoint:
    username = unquote(url.username) if url.username else None
    password = unquote(url.password) if url.password is not None else None
    if url.scheme == "unix":
        path_db = None
        path = url.path
    else:
        path = ""
        path_db = _db_from_path(url)
    if "db" in query:
        query_db = _db("db", query["db"])
        if path_db is not None and path_db != query_db:
            raise InvalidArgument(
                f"the Redis URL names database {path_db} in its path and {query_db} in ?db="
            )
        db = query_db
    else:
        db = path_db or 0
    if "health_check_interval" in query:
        _float("health_check_interval", query["health_check_interval"], 0.0, 3600.0)
    try:
        port = url.port or 6379
    except ValueError:
        raise InvalidArgument(f"the Redis URL's port is not a number: {_shown(url)}") from None
    tls = _tls_context(query) if url.scheme == "rediss" else None
    if url.scheme != "rediss" and any(name.startswith("ssl_") for name in query):
        raise InvalidArgument("ssl_* options need a rediss:// URL")
    return Endpoint(
        host=url.hostname or "",
        port=port,
        path=path,
        db=db,
        username=username,
        password=password,
        tls=tls,
        server_hostname=url.hostname if tls is not None and tls.check_hostname else None,
        client_name=query.get("client_name") or None,
    )


def _db_from_path(url: SplitResult) -> int | None:
    path = url.path.strip("/")
    if not path:
        return None
    return _db("the path", path)


def _db(what: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) > _MAX_DB:
        raise InvalidArgument(
            f"a Redis URL's database ({what}) must be a number from 0 to {_MAX_DB}, got {raw!r}"
        )
    return int(raw)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    requirements = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": None}
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in requirements:
        raise InvalidArgument("ssl_cert_reqs must be none, optional or required")
    check = query.get("ssl_check_hostname", "true" if reqs == "required" else "false").lower()
    if check not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidArgument("ssl_check_hostname must be true or false")
    try:
        context = ssl.create_default_context(
            cafile=query.get("ssl_ca_certs") or None, cadata=query.get("ssl_ca_data") or None
        )
        if query.get("ssl_certfile"):
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise InvalidArgument(f"the Redis URL's TLS settings cannot be loaded: {exc}") from None
    context.check_hostname = check in ("true", "1", "yes") and reqs != "none"
    if requirements[reqs] is not None:
        context.verify_mode = requirements[reqs]  # type: ignore[assignment]
    return context


def _shown(url: SplitResult) -> str:
    """*url* without its password, quoted (for messages)."""
    return repr(redact(url))


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
