"""Which client carries litechan's calls to a Redis Cluster: its own, or redis-py's?

Starts a private 3-primary Redis Cluster (``redis-server --cluster-enabled yes`` on free ports,
made with ``redis-cli --cluster create``, no replicas, nothing persisted) and runs the same
workload through each contender, one after another, on asyncio: 100 concurrent tasks, each
running ``EVALSHA`` of a one-key script (``INCR`` of its key, the keys spread over every slot)
and awaiting its reply before the next, 60,000 calls in all.

- **litechan**: ``ClusterClient`` (what the ``redis+cluster://`` backend uses): one
  auto-batched connection per primary, calls routed by the slot of their first key.
- **redis-py RedisCluster**: ``redis.asyncio.RedisCluster`` (the library's cluster client,
  with its connection pool per node), each task awaiting ``evalsha``.
- **redis-py RedisCluster pipelines**: the same calls in ``pipeline(transaction=False)`` of
  200 from one task (what a hand-written batching caller would do; redis-py splits each
  pipeline by node). redis-py 8.1 refuses ``EVALSHA`` in a cluster pipeline: the row says so.

Reported: calls/s, and the CPU seconds of the cluster's servers and of this process per call.

Command (from the repository root, ``pip install -e ".[dev]"`` done, ``redis-server`` and
``redis-cli`` on the PATH)::

    .venv/bin/python benchmarks/redis_cluster_clients.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import redis
import redis.asyncio
import redis.asyncio.cluster

from litechan._backends.redis._client import Script
from litechan._backends.redis._cluster import ClusterClient
from litechan._backends.redis._options import parse_url

SCRIPT = Script("bench_incr", "return redis.call('INCR', KEYS[1])", flags="")
TASKS = 100


def _free_pair() -> int:
    """A port below 55536 that is free, with its bus port (+10000)."""
    import socket

    for _ in range(1000):
        port = 20_000 + int.from_bytes(os.urandom(2)) % 35_000
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports")


@contextlib.contextmanager
def cluster(primaries: int = 3) -> Iterator[list[int]]:
    """A private Redis Cluster of *primaries* primaries for the ``with`` block: its ports."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("redis-server and redis-cli must be on the PATH")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="litechan-cluster-") as workdir:
        ports = []
        try:
            for i in range(primaries):
                port = _free_pair()
                node_dir = Path(workdir) / str(i)
                node_dir.mkdir()
                command = [
                    binary, "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                ]  # fmt: skip
                processes.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
                ports.append(port)
            for port in ports:
                _wait_ping(port)
            addresses = [f"127.0.0.1:{port}" for port in ports]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            for port in ports:
                _wait_ok(port)
            yield ports
        finally:
            for process in processes:
                process.kill()
                process.wait()


def _wait_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
            if client.ping():
                return
        time.sleep(0.02)  # another process starts: there is nothing to await
    raise RuntimeError(f"redis-server on {port} did not start")


def _wait_ok(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with redis.Redis(port=port) as client:
            if b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"):
                return
        time.sleep(0.05)  # the nodes converge over their bus: nothing to await
    raise RuntimeError(f"cluster node {port} not ok")


def _server_cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            cpu = client.info("cpu")
            total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


async def _tasks(calls: int, one: Callable[[int], Awaitable[object]]) -> None:
    per_task = calls // TASKS

    async def task(t: int) -> None:
        for i in range(per_task):
            await one(t * per_task + i)

    await asyncio.gather(*(task(t) for t in range(TASKS)))


async def litechan_client(ports: list[int], calls: int) -> None:
    seeds = ",".join(f"127.0.0.1:{port}" for port in ports)
    client = ClusterClient(parse_url(urlsplit(f"redis+cluster://{seeds}/")))
    client.register(SCRIPT)
    async with anyio.create_task_group() as tg:
        await client.start(tg)
        await _tasks(calls, lambda i: client.run(SCRIPT, (f"k{i % 10_000}",), ()))
        await client.aclose()
        tg.cancel_scope.cancel()


async def redis_py_cluster(ports: list[int], calls: int) -> None:
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=ports[0])
    sha = await client.script_load(SCRIPT.flagged)  # loaded on every primary
    await _tasks(calls, lambda i: client.evalsha(sha, 1, f"k{i % 10_000}"))
    await client.aclose()


async def redis_py_pipelines(ports: list[int], calls: int) -> None:
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=ports[0])
    sha = await client.script_load(SCRIPT.flagged)
    for start in range(0, calls, 200):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 200, calls)):
            pipe.evalsha(sha, 1, f"k{i % 10_000}")
        await pipe.execute()
    await client.aclose()


CONTENDERS: dict[str, Callable[[list[int], int], Coroutine[Any, Any, None]]] = {
    "litechan ClusterClient": litechan_client,
    "redis-py RedisCluster": redis_py_cluster,
    "redis-py RedisCluster pipelines": redis_py_pipelines,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60_000)
    args = parser.parse_args()
    with cluster() as ports:
        print(f"3-primary cluster on {ports}; {args.calls:,} EVALSHA calls each, {TASKS} tasks")
        print(f"{'contender':34} {'calls/s':>10} {'server CPU/call':>16} {'client CPU/call':>16}")
        for name, contender in CONTENDERS.items():
            for port in ports:
                with redis.Redis(port=port) as client:
                    client.flushall()
            server_before, client_before = _server_cpu(ports), time.process_time()
            started = time.perf_counter()
            try:
                asyncio.run(contender(ports, args.calls))
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                print(f"{name:34} refused: {str(exc)[:70]}")
                continue
            wall = time.perf_counter() - started
            server = (_server_cpu(ports) - server_before) / args.calls * 1e6
            own = (time.process_time() - client_before) / args.calls * 1e6
            print(f"{name:34} {args.calls / wall:>10,.0f} {server:>13.1f} µs {own:>13.1f} µs")


if __name__ == "__main__":
    main()
