"""Run the voice agent: in one process on ``memory://``, or as separate processes on Redis.

``python examples/voice_agent.py`` starts two gateways, two workers and the simulated users in
one process on ``memory://`` and prints the report. With ``--backend redis://...`` the gateways,
the workers and the users are five processes that share the Redis server; ``--chaos`` kills
(SIGKILL) one gateway and one worker once a third of the turns are done. The exit status is 1
when any reply was lost, misrouted or out of order.

The ``gateway``, ``worker`` and ``users`` roles are what the Redis run starts in each process; they
can be started by hand on several machines too.
"""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import secrets
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs
import msgspec
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import litechan
from litechan.testing import redis_backend

from .gateway import GatewayStats, listen, run_gateway
from .report import Monitor, Report
from .stages import Latency, Profile, simulated
from .users import Tally, run_users
from .wire import WORKERS, declare
from .worker import WorkerStats, run_worker

SCRIPT: Final = Path(__file__).resolve().parent.parent / "voice_agent.py"
GATEWAY_NAMES: Final = ("gw-1", "gw-2")
WORKER_NAMES: Final = ("worker-1", "worker-2")
DEFAULTS: Final = Profile()
START_TIMEOUT: Final = 60.0  # seconds for a child process to be ready


# -- command line ------------------------------------------------------------------------------


def _pair(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> tuple[float, float]:
        low, high = (kind(part) for part in text.split(","))
        if not 0 <= low <= high:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 <= LOW <= HIGH: {text!r}")
        return low, high

    return parse


def _latency(text: str) -> Latency:
    try:
        return Latency.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice_agent.py",
        description="A voice agent's link: simulated users, gateways and workers on litechan.",
    )
    parser.add_argument(
        "role",
        nargs="?",
        default="run",
        choices=("run", "gateway", "worker", "users"),
        help="run: everything, and the report (default); the others: one part, for separate "
        "processes",
    )
    parser.add_argument("--sessions", type=int, default=50, help="simulated users (default 50)")
    parser.add_argument("--turns", type=int, default=3, help="turns per user (default 3)")
    parser.add_argument(
        "--backend",
        default="memory://",
        help="memory:// (default: one process) or a redis:// URL (separate processes)",
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="with Redis: SIGKILL one gateway and one worker once a third of the turns are done",
    )
    parser.add_argument(
        "--roam",
        type=float,
        default=0.1,
        help="chance that a user moves to another gateway between turns (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the users' randomness")
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="seconds over which users start (default: the mean think time, at least N/200)",
    )
    parser.add_argument("--reply-timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", type=Path, help="also write the report to this file, as JSON")
    model = parser.add_argument_group("simulated models (latencies in ms: MEDIAN,P99)")
    model.add_argument("--asr-final", type=_latency, default=DEFAULTS.asr_final)
    model.add_argument("--llm-first-token", type=_latency, default=DEFAULTS.llm_first_token)
    model.add_argument("--tts-first-frame", type=_latency, default=DEFAULTS.tts_first_frame)
    model.add_argument(
        "--utterance", type=_pair(int), default=DEFAULTS.utterance, help="frames: MIN,MAX"
    )
    model.add_argument(
        "--think", type=_pair(float), default=DEFAULTS.think, help="seconds: MIN,MAX"
    )
    role = parser.add_argument_group("roles")
    role.add_argument("--name", help="gateway or worker name")
    role.add_argument("--gateways", nargs="+", help="users: gateway base URLs (ws://host:port)")
    role.add_argument("--run-id", default=None, help="users: prefix of the session ids")
    return parser


def _profile(args: argparse.Namespace) -> Profile:
    return attrs.evolve(
        Profile(),
        asr_final=args.asr_final,
        llm_first_token=args.llm_first_token,
        tts_first_frame=args.tts_first_frame,
        utterance=args.utterance,
        think=args.think,
    )


def _model_args(args: argparse.Namespace) -> list[str]:
    """The options a child process needs to simulate the same models and users."""

    def latency(value: Latency) -> str:
        return f"{value.median * 1e3:g},{value.p99 * 1e3:g}"

    return [
        f"--asr-final={latency(args.asr_final)}",
        f"--llm-first-token={latency(args.llm_first_token)}",
        f"--tts-first-frame={latency(args.tts_first_frame)}",
        f"--utterance={args.utterance[0]},{args.utterance[1]}",
        f"--think={args.think[0]},{args.think[1]}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sessions < 1 or args.turns < 1:
        raise SystemExit("--sessions and --turns must be at least 1")
    _configure_logging()
    _raise_open_files_limit()
    profile = _profile(args)
    loop = _loop_options()
    if args.role == "gateway":
        anyio.run(gateway_process, args, backend_options=loop)
        return 0
    if args.role == "worker":
        anyio.run(worker_process, args, profile, backend_options=loop)
        return 0
    if args.role == "users":
        anyio.run(users_process, args, profile, backend_options=loop)
        return 0
    if args.backend.startswith("memory:"):
        if args.chaos:
            raise SystemExit("--chaos kills processes: it needs --backend redis://...")
        report = anyio.run(run_embedded, args, profile, backend_options=loop)
    else:
        report = anyio.run(run_processes, args, profile, backend_options=loop)
    print(report.render())
    if args.json is not None:
        args.json.write_bytes(msgspec.json.encode(report))
    return 1 if report.problems() else 0


def _configure_logging() -> None:
    """Warnings and errors go to stderr: stdout carries the report, or a child's messages."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _raise_open_files_limit() -> None:
    """Each user holds a socket, and so does its gateway: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_options() -> dict[str, Any]:
    """uvloop when it is installed (the ``examples`` extra installs it): about twice as fast."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _ramp(args: argparse.Namespace) -> float:
    """Users start over this many seconds: their first turns spread like the later ones."""
    if args.ramp is not None:
        return float(args.ramp)
    low, high = args.think
    return max(int(args.sessions) / 200, (float(low) + float(high)) / 2)


async def _users(
    args: argparse.Namespace, profile: Profile, gateways: Sequence[str], tally: Tally
) -> None:
    await run_users(
        gateways,
        sessions=args.sessions,
        turns=args.turns,
        profile=profile,
        tally=tally,
        run_id=args.run_id or "session",
        seed=args.seed,
        roam=args.roam,
        ramp=_ramp(args),
        reply_timeout=args.reply_timeout,
    )


def _ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}"


# -- one process ---------------------------------------------------------------------------------


async def run_embedded(args: argparse.Namespace, profile: Profile) -> Report:
    """Two gateways, two workers and every user in this process, on ``args.backend``."""
    tally = Tally()
    gateways = {name: GatewayStats() for name in GATEWAY_NAMES}
    workers = {name: WorkerStats() for name in WORKER_NAMES}
    sockets = {name: listen() for name in GATEWAY_NAMES}
    urls = [_ws_url(sock.getsockname()[1]) for sock in sockets.values()]
    stop = anyio.Event()
    async with litechan.connect(args.backend) as broker:
        monitor = Monitor(*declare(broker))
        async with anyio.create_task_group() as background:
            for name, stats in workers.items():
                ready = anyio.Event()
                background.start_soon(
                    functools.partial(
                        run_worker, broker, name, simulated(profile), started=ready, stats=stats
                    )
                )
                await ready.wait()
            background.start_soon(monitor.run)
            start = anyio.current_time()
            async with anyio.create_task_group() as front:
                for name, sock in sockets.items():
                    front.start_soon(
                        functools.partial(
                            run_gateway, broker, name, sock, stop=stop, stats=gateways[name]
                        )
                    )
                await _users(args, profile, urls, tally)
                elapsed = anyio.current_time() - start
                stop.set()
            await monitor.sample()
            background.cancel_scope.cancel()
    return Report(
        backend=broker.url,  # shown without a password
        layout="one process: 2 gateways, 2 workers and the users",
        elapsed=elapsed,
        tally=tally,
        backlog=monitor.backlog,
        gateways={name: attrs.asdict(stats) for name, stats in gateways.items()},
        workers={name: attrs.asdict(stats) for name, stats in workers.items()},
    )


# -- separate processes -----------------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    """Tell the parent process something: one JSON object per line on stdout."""
    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
    sys.stdout.flush()


async def _terminated() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def gateway_process(args: argparse.Namespace) -> None:
    stats, stop = GatewayStats(), anyio.Event()
    sock = listen()
    async with litechan.connect(args.backend) as broker, anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(run_gateway, broker, args.name, sock, stop=stop, stats=stats)
        )
        _emit({"ready": args.name, "port": sock.getsockname()[1]})
        await _terminated()
        stop.set()
    _emit({"stats": attrs.asdict(stats)})


async def worker_process(args: argparse.Namespace, profile: Profile) -> None:
    stats, ready = WorkerStats(), anyio.Event()
    async with litechan.connect(args.backend) as broker, anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(
                run_worker, broker, args.name, simulated(profile), started=ready, stats=stats
            )
        )
        await ready.wait()
        _emit({"ready": args.name})
        await _terminated()
        tg.cancel_scope.cancel()
    _emit({"stats": attrs.asdict(stats)})


async def users_process(args: argparse.Namespace, profile: Profile) -> None:
    tally = Tally()

    async def progress() -> None:
        while True:
            _emit({"progress": tally.turns_done + tally.turns_lost})
            await anyio.sleep(0.25)

    async with anyio.create_task_group() as tg:
        tg.start_soon(progress)
        await _users(args, profile, args.gateways, tally)
        tg.cancel_scope.cancel()
    _emit({"tally": msgspec.to_builtins(tally)})


@attrs.define(eq=False)
class Child:
    """A child process that reports on its stdout, one JSON object per line."""

    name: str
    process: Process
    lines: BufferedByteReceiveStream
    killed: bool = False

    @classmethod
    async def start(cls, name: str, role: str, options: list[str]) -> Child:
        command = [sys.executable, str(SCRIPT), role, *options]
        process = await anyio.open_process(command, stderr=None)
        assert process.stdout is not None
        return cls(name, process, BufferedByteReceiveStream(process.stdout))

    async def read(self) -> dict[str, Any]:
        """The next message; raise ``RuntimeError`` if the process ended instead."""
        try:
            line = await self.lines.receive_until(b"\n", 1 << 24)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            code = await self.process.wait()
            raise RuntimeError(f"{self.name} exited with status {code}") from None
        message: dict[str, Any] = msgspec.json.decode(line)
        return message

    async def read_until(self, key: str) -> dict[str, Any]:
        while key not in (message := await self.read()):
            pass
        return message

    def kill(self) -> None:
        self.killed = True
        self.process.kill()

    async def stop(self) -> dict[str, Any] | None:
        """Ask the process to stop; return its final stats (None when it was killed)."""
        if self.killed:
            await self.process.wait()
            return None
        self.process.terminate()
        with anyio.fail_after(30):
            stats = await self.read_until("stats")
            await self.process.wait()
        result: dict[str, Any] = stats["stats"]
        return result


def _with_lease(url: str) -> str:
    """*url* with a 2 s lease unless it sets one: a killed worker's sessions move after 2 s."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("lease", "2")
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _balanced(audio: litechan.OrderedTopic, workers: Sequence[str]) -> None:
    """Wait until every partition of ``audio`` has an owner, and every worker owns some."""
    with anyio.fail_after(START_TIMEOUT):
        while True:
            stats = await audio.stats()
            owners = [
                p.groups[WORKERS].owner if WORKERS in p.groups else None for p in stats.partitions
            ]
            if None not in owners and set(owners) == set(workers):
                return
            await anyio.sleep(0.05)


async def run_processes(args: argparse.Namespace, profile: Profile) -> Report:
    """Two gateway processes, two worker processes and a users process, sharing Redis."""
    run_id = args.run_id or secrets.token_hex(3)
    url = _with_lease(args.backend)
    model = _model_args(args)
    chaos: list[str] = []
    async with AsyncExitStack() as stack:
        children: list[Child] = []

        def kill_all() -> None:
            for child in children:
                if child.process.returncode is None:
                    child.process.kill()

        stack.callback(kill_all)
        if "namespace=" not in url:
            # A private namespace for this run, deleted afterwards: what the conformance kit's
            # redis_backend gives each of its checks.
            kit = redis_backend(url)()
            url = (await stack.enter_async_context(kit)).url
        for role, names, options in (
            ("worker", WORKER_NAMES, model),
            ("gateway", GATEWAY_NAMES, []),
        ):
            for name in names:
                child = await Child.start(name, role, ["--backend", url, "--name", name, *options])
                children.append(child)
        workers, gateways = children[:2], children[2:]
        with anyio.fail_after(START_TIMEOUT):
            for child in workers:
                await child.read_until("ready")
            ports = [(await child.read_until("ready"))["port"] for child in gateways]
        broker = await stack.enter_async_context(litechan.connect(url))
        audio, replies = declare(broker)
        await _balanced(audio, WORKER_NAMES)
        monitor = Monitor(audio, replies)
        users = await Child.start(
            "users",
            "users",
            [
                "--gateways",
                *(_ws_url(port) for port in ports),
                f"--sessions={args.sessions}",
                f"--turns={args.turns}",
                f"--roam={args.roam}",
                f"--seed={args.seed}",
                f"--ramp={_ramp(args)}",
                f"--reply-timeout={args.reply_timeout}",
                f"--run-id={run_id}",
                *model,
            ],
        )
        children.append(users)
        expected = args.sessions * args.turns
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)
            while "tally" not in (message := await users.read()):
                if args.chaos and not chaos and message["progress"] >= expected / 3:
                    at = anyio.current_time() - start
                    for victim in (gateways[0], workers[0]):
                        victim.kill()
                        chaos.append(
                            f"SIGKILL {victim.name} (pid {victim.process.pid}) at {at:.1f} s"
                        )
            elapsed = anyio.current_time() - start
            tg.cancel_scope.cancel()
        await monitor.sample()
        tally = msgspec.convert(message["tally"], Tally)
        await users.process.wait()
        finals = {child.name: await child.stop() for child in gateways + workers}
    layout = "5 processes: 2 gateways, 2 workers, the users" + (
        f" ({url.split('?', 1)[1]})" if "?" in url else ""
    )
    return Report(
        backend=broker.url,  # shown without a password
        layout=layout,
        elapsed=elapsed,
        tally=tally,
        backlog=monitor.backlog,
        gateways={n: s for n, s in finals.items() if n in GATEWAY_NAMES and s is not None},
        workers={n: s for n, s in finals.items() if n in WORKER_NAMES and s is not None},
        chaos=chaos,
    )
