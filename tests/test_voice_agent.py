"""The voice-agent example (examples/voice_agent.py): it runs, and its checks can fail.

The end-to-end runs start the example as a user would, in a child process: on ``memory://`` in
one process, and on a private Redis server as five processes with one gateway and one worker
killed (SIGKILL) mid-run. The example exits non-zero when a reply was lost, misrouted or out of
order, and writes its report as JSON, which the tests read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "voice_agent.py"
sys.path.insert(0, str(SCRIPT.parent))

from voice.stages import Latency  # noqa: E402
from voice.users import ReplyChecker, Tally  # noqa: E402
from voice.wire import Delivery, Reply, reply_encoder  # noqa: E402

FAST_USERS = ["--think", "0.2,0.6", "--utterance", "15,30"]


def run_example(tmp_path: Path, *options: str, timeout: float) -> tuple[dict[str, Any], str]:
    """Run the example with *options*; return its JSON report and its printed report."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(report.read_text())
    return result, done.stdout


@pytest.mark.timeout(150)
def test_one_process_on_memory_answers_every_turn(tmp_path: Path) -> None:
    """On memory://, every turn is answered, nothing is lost, and roams close the old socket."""
    report, printed = run_example(
        tmp_path, "--sessions", "12", "--turns", "3", "--roam", "0.5", *FAST_USERS, timeout=120
    )
    tally = report["tally"]
    assert tally["turns_done"] == tally["turns_expected"] == 36
    assert (tally["lost"], tally["misrouted"], tally["out_of_order"], tally["corrupt"]) == (
        0,
        0,
        0,
        0,
    )
    assert tally["roams"] > 0
    assert tally["roams_closed"] == tally["roams"]  # each old socket closed by its gateway (4001)
    assert len(tally["first_audio"]) == 36
    assert all(f >= m for f, m in zip(tally["first_audio"], tally["model"], strict=True))
    assert sum(w["turns"] for w in report["workers"].values()) == 36
    assert "OK: nothing lost, misrouted or out of order" in printed


@pytest.mark.timeout(240)
def test_redis_processes_survive_a_killed_gateway_and_worker(
    tmp_path: Path, redis_base_url: str
) -> None:
    """On Redis, SIGKILL of a gateway and a worker mid-run loses and misroutes nothing."""
    report, printed = run_example(
        tmp_path,
        "--backend",
        redis_base_url,
        "--chaos",
        "--sessions",
        "16",
        "--turns",
        "4",
        *FAST_USERS,
        timeout=210,
    )
    tally = report["tally"]
    assert len(report["chaos"]) == 2  # one gateway and one worker were killed
    assert tally["turns_done"] == tally["turns_expected"] == 64
    assert (tally["lost"], tally["misrouted"], tally["out_of_order"], tally["corrupt"]) == (
        0,
        0,
        0,
        0,
    )
    assert tally["reconnects"] > 0  # the killed gateway's users moved to the other one
    assert set(report["workers"]) == {"worker-2"}  # the survivor reported; the killed one could not
    assert "SIGKILL gw-1" in printed


def test_the_example_fails_when_a_reply_is_lost(tmp_path: Path) -> None:
    """A run whose replies cannot all arrive in time exits 1 and says what failed."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sessions", "2", "--turns", "1", "--reply-timeout", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: " in done.stdout
    assert "turns without a complete reply" in done.stdout


# -- the users' checks, on made-up deliveries ------------------------------------------------


def delivery(offset: int, reply: Reply, gap_before: int = 0) -> Delivery:
    return Delivery("e1", offset, gap_before, msgspec.Raw(reply_encoder.encode(reply)))


def replies_of_turn(session: str, turn: int, audio: int) -> list[Reply]:
    pcm = bytes(range(256)) * 2 + bytes(128)  # 640 bytes, not silence
    return [
        Reply(session, turn, "transcript", 0, b"hello"),
        Reply(session, turn, "token", 0, b"sure "),
        *(
            Reply(session, turn, "audio", i, pcm, model_s=0.1 if i == 0 else 0.0)
            for i in range(audio)
        ),
        Reply(session, turn, "done", 0, totals=(0, 1, audio)),
    ]


def test_checker_accepts_a_complete_reply() -> None:
    """A turn's replies in order, each once, count as received and finish the turn."""
    tally = Tally()
    checker = ReplyChecker("s-1", tally)
    checker.begin(0)
    results = [
        checker.receive(delivery(i + 1, r)) for i, r in enumerate(replies_of_turn("s-1", 0, 3))
    ]
    assert results == [False, False, False, False, False, True]
    assert (tally.replies, tally.lost, tally.duplicates, tally.out_of_order) == (6, 0, 0, 0)
    assert checker.turn.done.is_set()
    assert checker.turn.audio_frames == 3


def test_checker_counts_lost_duplicate_reordered_and_misrouted_replies() -> None:
    """Each kind of fault the example guards against is counted, not hidden."""
    tally = Tally()
    checker = ReplyChecker("s-1", tally)
    checker.begin(0)
    transcript, token, a0, a1, a2, done = replies_of_turn("s-1", 0, 3)
    for i, reply in enumerate([transcript, token, a0, a2, a0, a1]):  # a2 early, a0 twice
        checker.receive(delivery(i + 1, reply))
    checker.receive(delivery(7, Reply("s-2", 0, "audio", 0, a0.data)))  # another session's
    checker.receive(delivery(8, Reply("s-1", 5, "token", 0, b"x")))  # a turn not spoken yet
    checker.receive(delivery(9, done, gap_before=2))  # two replies trimmed before this one
    assert tally.out_of_order == 2  # a2 before a1, then a1 after a2
    assert tally.duplicates == 1
    assert tally.misrouted == 2
    assert tally.lost == 2

    short = Tally()
    checker = ReplyChecker("s-1", short)
    checker.begin(0)
    transcript, token, a0, a1, a2, done = replies_of_turn("s-1", 0, 3)
    for i, reply in enumerate([transcript, token, a0, done]):  # a1 and a2 never arrive
        checker.receive(delivery(i + 1, reply))
    assert short.lost == 2


def test_checker_drops_a_turn_answered_again_after_it_was_done() -> None:
    """A whole turn answered again by a second worker (after a crash) counts as duplicates only."""
    tally = Tally()
    checker = ReplyChecker("s-1", tally)
    checker.begin(0)
    for i, reply in enumerate(replies_of_turn("s-1", 0, 2)):
        checker.receive(delivery(i + 1, reply))
    checker.begin(1)
    for i, reply in enumerate(replies_of_turn("s-1", 0, 2)):
        checker.receive(delivery(10 + i, reply))
    assert tally.duplicates == 5
    assert (tally.lost, tally.misrouted, tally.out_of_order) == (0, 0, 0)


def test_latency_has_the_median_and_p99_it_is_given() -> None:
    """The simulated latencies follow the configured median and 99th percentile."""
    import random

    latency = Latency.parse("350,2500")
    rng = random.Random(1)
    samples = sorted(latency.sample(rng) for _ in range(20_000))
    assert samples[10_000] == pytest.approx(0.350, rel=0.05)
    assert samples[19_800] == pytest.approx(2.5, rel=0.15)
    with pytest.raises(ValueError, match="MEDIAN,P99"):
        Latency.parse("fast")


# -- the gateway, against a real uvicorn server and WebSocket client ----------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_gateway_refuses_bad_input_with_a_close_code() -> None:
    """A bad session id closes with 1008, a non-frame message with 1003; nothing is sent on."""
    import anyio
    from voice.gateway import GatewayStats, listen, run_gateway
    from voice.wire import declare
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    import litechan

    stats, stop, sock = GatewayStats(), anyio.Event(), listen()
    base = f"ws://127.0.0.1:{sock.getsockname()[1]}/sessions"
    with anyio.fail_after(20):
        async with litechan.connect("memory://") as broker, anyio.create_task_group() as tg:
            audio, _ = declare(broker)
            tg.start_soon(lambda: run_gateway(broker, "gw-1", sock, stop=stop, stats=stats))
            async with connect(f"{base}/bad%20name") as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008
            async with connect(f"{base}/session-1") as ws:
                await ws.send(b"not a frame")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1003
            assert (await audio.stats()).length == 0
            stop.set()
    assert stats.bad_input == 2
    assert stats.frames == 0
