"""The Redis test infrastructure itself: private servers, TLS, the cuttable proxy, URL helpers."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio
from fault_proxy import FaultProxy, command
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis_procs.children import spawn
from redis_support import (
    RedisServer,
    RedisServerError,
    TcpProxy,
    delete_namespace,
    fresh_namespace,
    litechan_url,
    namespace_of,
    next_stream_id,
    plain_redis_url,
    xadd_after_last,
)

# Redis-touching async tests run on asyncio only: redis-py's client is asyncio-only.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def sync_client(url: str) -> redis.Redis:
    """A redis-py client that fails at once (no retries) and never hangs."""
    return redis.Redis.from_url(
        url,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=redis.retry.Retry(NoBackoff(), 0),
    )


def async_client(url: str, *, socket_timeout: float = 2) -> redis.asyncio.Redis:
    """An asyncio redis-py client that fails at once (no retries) and never hangs."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


# ---------------------------------------------------------------------------------------------
# RedisServer


def test_server_answers_without_persistence(redis_server: RedisServer) -> None:
    """The shared server answers on its URL and persists nothing (no RDB snapshots, no AOF)."""
    client = sync_client(redis_server.url)
    try:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    finally:
        client.close()


def test_server_answers_on_its_unix_socket(redis_server: RedisServer) -> None:
    """The shared server's unix_url reaches the same server as its TCP URL."""
    key = f"unix-{fresh_namespace()}"
    tcp, unix = sync_client(redis_server.url), sync_client(redis_server.unix_url)
    try:
        tcp.set(key, b"seen", ex=60)
        assert unix.get(key) == b"seen"
        assert redis_server.unix_url.startswith("unix:///")
        assert "?db=0" in redis_server.unix_url
    finally:
        tcp.delete(key)
        tcp.close()
        unix.close()


def test_kill_then_restart_comes_back_empty_on_the_same_port() -> None:
    """kill() makes commands fail; restart() serves again on the same port, with no data."""
    with RedisServer() as server:
        port, pid = server.port, server.pid
        client = sync_client(server.url)
        try:
            client.set("k", b"v")
            server.kill()
            assert not server.running
            assert server.pid is None
            with pytest.raises(redis.ConnectionError):
                client.get("k")
            server.restart()
            assert server.port == port
            assert server.pid != pid
            assert client.get("k") is None
            assert client.dbsize() == 0
        finally:
            client.close()


def test_stop_and_close_leave_no_process_nor_files() -> None:
    """stop() ends the process gracefully, start() brings it back; close() removes its files."""
    server = RedisServer()
    with server:
        directory = server.directory
        server.stop()
        assert not server.running
        assert not server.ping()
        server.start()
        assert server.ping()
        process_pid = server.pid
    assert process_pid is not None
    assert not server.running
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(process_pid, 0)
    with pytest.raises(RedisServerError, match="closed"):
        server.start()


def test_a_server_that_cannot_start_fails_with_its_output() -> None:
    """A server that exits at start raises RedisServerError quoting redis-server's own output."""
    with pytest.raises(RedisServerError, match=r"(?s)did not start.*Bad directive"):
        RedisServer(extra_args=["--no-such-directive", "1"]).__enter__()


def test_a_port_in_use_is_reported_after_the_retry_budget() -> None:
    """A restart whose port someone else took keeps retrying, then fails clearly."""
    with RedisServer(start_timeout=1.0) as server:
        server.kill()
        squatter = socket.socket()
        try:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen(1)
            with pytest.raises(RedisServerError, match="Address already in use"):
                server.start()
        finally:
            squatter.close()
        server.start()
        assert server.ping()


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a redis-server binary, RedisServer fails (never skips) saying what to install."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    hint = r"apt-get install redis-server.*LITECHAN_TEST_REDIS_URL"
    with pytest.raises(RedisServerError, match=hint):
        RedisServer()


def test_tls_server_serves_rediss_with_its_ca() -> None:
    """A tls=True server answers on its rediss:// URL, verifying the certificate with its CA."""
    with RedisServer(tls=True) as server:
        url = server.tls_url
        assert url.startswith(f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs=")
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.set("tls", b"ok")
            assert client.get("tls") == b"ok"
            assert client.connection_pool.connection_class is redis.SSLConnection
        finally:
            client.close()
        assert server.tls_files is not None
        untrusted = redis.Redis(
            host="127.0.0.1",
            port=server.tls_port,
            ssl=True,
            ssl_cert_reqs="required",
            socket_connect_timeout=5,
            retry=redis.retry.Retry(NoBackoff(), 0),
        )
        try:
            with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
                untrusted.ping()  # the system CAs do not know our throw-away CA
        finally:
            untrusted.close()


# ---------------------------------------------------------------------------------------------
# FaultProxy


@asyncio_only
@pytest.mark.anyio
async def test_fault_proxy_answers_and_loses_replies_of_chosen_commands(
    redis_server: RedisServer,
) -> None:
    """A made-up reply goes back in its place in a pipeline without the command running; a lost
    reply's command runs, and the client's connection is reset instead of the reply coming."""
    key = f"proxy-{fresh_namespace()}"
    with anyio.fail_after(20), FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = async_client(proxy.url)
        direct = redis.Redis(port=redis_server.port)
        try:
            answered = proxy.answer(command("INCRBY"), b"-ERR made up\r\n")
            pipe = client.pipeline(transaction=False)
            pipe.set(key, 5, ex=60)
            pipe.incr(key)
            pipe.get(key)
            first, second, third = await pipe.execute(raise_on_error=False)
            assert first is True
            assert isinstance(second, redis.exceptions.ResponseError), second
            assert "made up" in str(second)
            assert third == b"5"
            assert answered.fired == 1
            assert direct.get(key) == b"5"  # INCRBY never reached the server
            lost = proxy.lose_reply(command("INCRBY"))
            with pytest.raises(redis.ConnectionError):
                await client.incr(key)
            await lost.wait()
            assert direct.get(key) == b"6"  # it ran; only its reply was lost
        finally:
            await client.aclose()
            direct.delete(key)
            direct.close()


@asyncio_only
@pytest.mark.anyio
async def test_fault_proxy_drops_replies_delays_and_restores(redis_server: RedisServer) -> None:
    """drop_replies lets requests run unanswered (subscribed links too, unless pubsub=False),
    delay holds replies, and restore resets the links that lost bytes."""
    key = f"proxy-{fresh_namespace()}"
    with anyio.fail_after(30), FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = async_client(proxy.url, socket_timeout=0.5)
        listener = async_client(proxy.url, socket_timeout=5)
        direct = redis.Redis(port=redis_server.port)
        pubsub = listener.pubsub()
        try:
            await pubsub.subscribe(key)
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            await client.ping()  # connected: the handshake's replies came through
            proxy.drop_replies(pubsub=False)
            with pytest.raises(redis.TimeoutError):
                await client.set(key, b"1", ex=60)
            assert direct.get(key) == b"1"  # it ran
            direct.publish(key, b"note")
            message = await pubsub.get_message(timeout=2)
            assert message is not None
            assert message["data"] == b"note"
            proxy.restore()
            assert proxy.links == 1  # the command link lost a reply: reset; the listener stays
            proxy.delay(0.3)
            started = anyio.current_time()
            assert await client.get(key) == b"1"
            assert anyio.current_time() - started >= 0.3
            proxy.delay(0)
        finally:
            await pubsub.aclose()
            await listener.aclose()
            await client.aclose()
            direct.delete(key)
            direct.close()


# ---------------------------------------------------------------------------------------------
# TcpProxy


@asyncio_only
@pytest.mark.anyio
async def test_proxy_forwards_and_a_cut_fails_commands_until_restored(
    redis_server: RedisServer,
) -> None:
    """Through the proxy commands work; cut() resets and refuses connections; restore() heals."""
    with anyio.fail_after(20), TcpProxy.for_server(redis_server) as proxy:
        client = async_client(proxy.url)
        key = f"proxy-{fresh_namespace()}"
        try:
            await client.set(key, b"1", ex=60)
            assert await client.get(key) == b"1"
            assert proxy.active_connections == 1
            proxy.cut()
            assert proxy.is_cut
            assert proxy.active_connections == 0
            with pytest.raises(redis.ConnectionError):
                await client.get(key)  # the open connection was reset
            with pytest.raises(redis.ConnectionError):
                await client.get(key)  # a new connection is reset on accept
            assert proxy.refused >= 1
            proxy.restore()
            assert not proxy.is_cut
            assert await client.get(key) == b"1"
        finally:
            await client.aclose()
            delete_namespace(redis_server.url, key)


@asyncio_only
@pytest.mark.anyio
async def test_a_timed_cut_restores_by_itself(redis_server: RedisServer) -> None:
    """cut(seconds) restores the network on its own once the time is over."""
    with anyio.fail_after(20), TcpProxy.for_server(redis_server) as proxy:
        client = async_client(proxy.url)
        try:
            assert await client.ping()
            proxy.cut(0.3)
            with pytest.raises(redis.ConnectionError):
                await client.ping()
            assert await anyio.to_thread.run_sync(proxy.wait_restored, 5.0)
            assert not proxy.is_cut
            assert await client.ping()
        finally:
            await client.aclose()


@asyncio_only
@pytest.mark.anyio
async def test_blackhole_cut_times_out_then_recovers(redis_server: RedisServer) -> None:
    """A blackhole cut makes commands time out (no error, no reply); restore() heals."""
    with anyio.fail_after(20), TcpProxy.for_server(redis_server) as proxy:
        client = async_client(proxy.url, socket_timeout=0.3)
        try:
            assert await client.ping()
            with proxy.cutting(mode="blackhole"):
                assert proxy.active_connections == 1  # kept open, but starved
                with pytest.raises(redis.TimeoutError):
                    await client.ping()
            assert await client.ping()
        finally:
            await client.aclose()


@asyncio_only
@pytest.mark.anyio
async def test_proxy_carries_large_values_both_ways(redis_server: RedisServer) -> None:
    """Values larger than the proxy's buffers cross it intact (back-pressure, partial writes)."""
    with anyio.fail_after(30), TcpProxy.for_server(redis_server) as proxy:
        client = async_client(proxy.url, socket_timeout=10)
        key = f"big-{fresh_namespace()}"
        value = os.urandom(3 << 20)
        try:
            await client.set(key, value, ex=60)
            async with anyio.create_task_group() as tg:
                results: list[bytes | None] = []

                async def fetch() -> None:
                    results.append(await client.get(key))

                for _ in range(4):
                    tg.start_soon(fetch)
            assert results == [value] * 4
        finally:
            await client.aclose()
            delete_namespace(redis_server.url, key)


def test_proxy_to_a_dead_server_resets_clients() -> None:
    """With the server killed, a client through the proxy gets a connection error, not a hang."""
    with RedisServer() as server, TcpProxy.for_server(server) as proxy:
        client = sync_client(proxy.url)
        try:
            assert client.ping()
            server.kill()
            with pytest.raises(redis.ConnectionError):
                client.ping()
            server.start()
            assert client.ping()
        finally:
            client.close()


def test_proxy_close_releases_its_thread_and_port(redis_server: RedisServer) -> None:
    """Closing the proxy stops its thread, closes open connections and frees its port."""
    proxy = TcpProxy.for_server(redis_server).start()
    client = sync_client(proxy.url)
    try:
        assert client.ping()
        thread_names = {thread.name for thread in threading.enumerate()}
        assert any(name.startswith("TcpProxy:") for name in thread_names)
        proxy.close()
        name = f"TcpProxy:{proxy.port}->{redis_server.port}"
        assert not any(thread.name == name for thread in threading.enumerate())
        with pytest.raises(redis.ConnectionError):
            client.ping()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
        with pytest.raises(RedisServerError, match="not running"):
            proxy.cut()
    finally:
        client.close()
        proxy.close()


# ---------------------------------------------------------------------------------------------
# URLs, namespaces, streams


def test_fresh_namespaces_are_unique_and_valid_names() -> None:
    """fresh_namespace() makes distinct names in litechan's alphabet from any test id."""
    names = {fresh_namespace("test_x[asyncio-a/b c]") for _ in range(100)} | {fresh_namespace()}
    assert len(names) == 101
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}", name), name


def test_litechan_url_adds_options_and_plain_url_strips_them() -> None:
    """litechan_url() sets namespace and options; plain_redis_url() gives redis-py its URL back."""
    base = "redis://127.0.0.1:6379/0?ssl_ca_certs=/tmp/ca.crt&lease=9"
    url = litechan_url(base, namespace="ns-1", lease=2, retry=0.5, socket_timeout=None)
    assert url.startswith("redis://127.0.0.1:6379/0?")
    assert namespace_of(url) == "ns-1"
    assert "lease=2" in url
    assert "retry=0.5" in url
    assert "ssl_ca_certs=/tmp/ca.crt" in url
    assert plain_redis_url(url) == "redis://127.0.0.1:6379/0?ssl_ca_certs=/tmp/ca.crt"
    assert namespace_of(litechan_url(base)) != namespace_of(litechan_url(base))
    assert namespace_of(litechan_url(url, lease=3)) == "ns-1"  # kept when already there


def test_redis_url_fixture_is_namespaced_and_cleaned(
    redis_url: str, redis_namespace: str, redis_base_url: str
) -> None:
    """The redis_url fixture carries this test's namespace; delete_namespace() drops its keys."""
    assert namespace_of(redis_url) == redis_namespace
    client = sync_client(plain_redis_url(redis_url))
    try:
        client.set(f"x:{{{redis_namespace}}}:a", b"1")
        client.set(f"{redis_namespace}:b", b"1")
        client.set("x:unrelated-key", b"1", ex=60)
        assert delete_namespace(redis_base_url, redis_namespace) == 2
        assert client.get("x:unrelated-key") == b"1"
    finally:
        client.delete("x:unrelated-key")
        client.close()


def test_next_stream_id_increments_the_sequence() -> None:
    """next_stream_id() returns the smallest ID after the given one, carrying into ms."""
    assert next_stream_id("5-0") == "5-1"
    assert next_stream_id(b"1700000000000-41") == "1700000000000-42"
    assert next_stream_id("0-0") == "0-1"
    assert next_stream_id(f"7-{(1 << 64) - 1}") == "8-0"


def test_xadd_after_last_appends_to_any_stream(redis_server: RedisServer) -> None:
    """xadd_after_last() appends after small explicit IDs and after time-based ones alike."""
    namespace = fresh_namespace()
    client = sync_client(redis_server.url)
    small, timed = f"{namespace}:small", f"{namespace}:timed"
    try:
        client.xadd(small, {"f": "1"}, id="1-0")
        client.xadd(small, {"f": "2"}, id="2-0")
        assert xadd_after_last(client, small, {"garbage": b"\xff"}) == "2-1"
        client.xadd(timed, {"f": "1"})  # "*": a time-based ID
        written = xadd_after_last(client, timed, {"garbage": "x"})
        last = client.xinfo_stream(timed)["last-generated-id"].decode()
        assert written == last
        assert [fields for _, fields in client.xrange(small)][-1] == {b"garbage": b"\xff"}
        client.xadd(small, {"f": "3"}, id=f"9-{(1 << 64) - 1}")
        assert xadd_after_last(client, small, {"g": "1"}) == "10-0"
    finally:
        client.delete(small, timed)
        client.close()


def test_temp_files_live_in_the_server_directory() -> None:
    """A server's log, unix socket and certificates all live in its own temporary directory."""
    with RedisServer(unix_socket=True, tls=True) as server:
        assert server.tls_files is not None
        paths = [server.log_path, server.socket_path, server.tls_files.ca_cert]
        assert all(isinstance(p, Path) and p.parent == server.directory for p in paths)
        assert server.log_path.exists()
        assert "Ready to accept connections" in server.log_tail()


# ---------------------------------------------------------------------------------------------
# child processes (on memory://, so this checks the harness, not a backend)


def _subscriber_config() -> dict[str, object]:
    return {
        "url": "memory://",
        "parent": "replies",
        "ttl": 60.0,
        "max_len": 100,
        "group": "gateways",
        "name": "gw-1",
        "topic": "sess-1",
        "ack_upto": 0,
    }


@asyncio_only
@pytest.mark.anyio
async def test_child_reports_events_and_stops_on_request() -> None:
    """A child's JSON events are awaited in order; a stop request ends it cleanly (exit 0)."""
    with anyio.fail_after(30):
        async with spawn("lite_subscriber", _subscriber_config(), name="gw-1") as child:
            event = await child.wait_for("subscribed", limit=20)
            assert event["topic"] == "sess-1"
            assert await child.stop() == 0
        assert [e["ev"] for e in child.events] == ["subscribed", "stopping", "closed"]
        assert child.process.returncode == 0


@asyncio_only
@pytest.mark.anyio
async def test_child_killed_is_reaped_and_waiting_on_it_fails_clearly() -> None:
    """A SIGKILLed child is reaped; waiting for an event it never sent fails with its story."""
    with anyio.fail_after(30):
        async with spawn("lite_subscriber", _subscriber_config(), name="gw-1") as child:
            await child.wait_for("subscribed", limit=20)
            child.kill()
            assert await child.process.wait() == -signal.SIGKILL
            with pytest.raises(AssertionError, match=r"(?s)child gw-1 exited .*subscribed"):
                await child.wait_for("got", limit=5)
