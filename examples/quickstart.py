"""End-to-end demo of the LiteTopic pattern on the in-process ``memory://`` backend.

Simulated clients stream audio frames for their sessions into the ordered topic ``audio``; two
workers of the consumer group ``asr`` process them (each session's frames in order, by one worker
at a time) and publish one reply per frame to the session's lite topic under ``replies``; two
gateways, each holding half of the sessions' connections, receive the replies of exactly their
sessions, merged over all the lite topics they own.

The demo checks what a voice agent relies on and exits non-zero when anything is lost, duplicated,
out of order or delivered to the wrong gateway::

    python examples/quickstart.py [--sessions 8] [--frames 25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import AsyncExitStack

import anyio
import attrs

import litechan

TIMEOUT = 15.0  # seconds: the demo finishes in well under one on any machine


@attrs.define
class Report:
    """What the gateways observed, per session."""

    sessions: list[str]
    frames: int
    holder: dict[str, str]  # session -> name of the gateway holding its connection
    received: dict[str, list[int]] = attrs.Factory(dict)  # session -> frame numbers, in order
    misrouted: list[tuple[str, str]] = attrs.Factory(list)  # (session, gateway that got it)
    corrupt: list[str] = attrs.Factory(list)
    latencies: list[float] = attrs.Factory(list)  # client send -> gateway receive, seconds
    handled_by: dict[str, set[str]] = attrs.Factory(dict)  # worker -> sessions it answered
    timed_out: bool = False

    @property
    def delivered(self) -> int:
        return sum(len(frames) for frames in self.received.values())

    @property
    def expected(self) -> int:
        return len(self.sessions) * self.frames

    def problems(self) -> list[str]:
        found: list[str] = []
        for session in self.sessions:
            got = self.received.get(session, [])
            if got != list(range(self.frames)):
                missing = sorted(set(range(self.frames)) - set(got))
                found.append(
                    f"{session}: got {len(got)} replies, missing {missing[:5]}"
                    f"{'...' if len(missing) > 5 else ''}, in order: {got == sorted(got)}"
                )
        found += [f"{s}: reply delivered to {gw}, not {self.holder[s]}" for s, gw in self.misrouted]
        found += [f"corrupt reply: {c}" for c in self.corrupt]
        if self.timed_out:
            found.append(f"not every reply arrived within {TIMEOUT:.0f} s")
        return found


async def client(audio: litechan.OrderedTopic, session: str, frames: int) -> None:
    """Stream *frames* audio packets of 320 bytes (10 ms of 16 kHz 16-bit mono) for *session*."""
    for n in range(frames):
        packet = n.to_bytes(4, "big") + bytes(316)
        await audio.send(session, packet, headers={"sent_at": repr(time.time())})
        await anyio.sleep(0.001)  # the microphone's pace, compressed


async def worker(
    audio: litechan.OrderedTopic, replies: litechan.LiteTopics, name: str, report: Report
) -> None:
    """An ASR/LLM/TTS worker: answer every frame on the session's lite topic, then ack it."""
    answered = report.handled_by.setdefault(name, set())
    async with audio.consumer(group="asr", name=name) as consumer:
        async for msg in consumer:
            frame = int.from_bytes(msg.payload[:4], "big")
            reply = f"{msg.key} frame {frame} via {name}".encode()
            await replies.publish(msg.key, reply, headers=msg.headers)
            await msg.ack()
            answered.add(msg.key)


def parse_reply(payload: bytes) -> tuple[str, int] | None:
    """Return (session, frame number) from a worker's reply, or None if it is garbled."""
    try:
        about, _, frame_text, *_ = payload.decode().split()
        return about, int(frame_text)
    except ValueError:
        return None


async def gateway(sub: litechan.Subscriber, name: str, report: Report, done: anyio.Event) -> None:
    """A gateway node: receive the replies of every session it holds, merged, and check them."""
    async for msg in sub:
        now = time.time()
        session = msg.lite_topic
        if report.holder.get(session) != name:
            report.misrouted.append((session, name))
        parsed = parse_reply(msg.payload)
        if parsed is None or parsed[0] != session:  # garbled, or another session's reply (G10)
            report.corrupt.append(f"{session}: {msg.payload!r}")
        else:
            report.received.setdefault(session, []).append(parsed[1])
        if "sent_at" in msg.headers:
            report.latencies.append(now - float(msg.headers["sent_at"]))
        await msg.ack()
        if report.delivered >= report.expected:
            done.set()


async def run(sessions: int, frames: int) -> Report:
    """Run the whole pipeline once and return what the gateways saw."""
    names = [f"session-{i:04d}" for i in range(sessions)]
    holder = {s: ("gw-1" if i % 2 == 0 else "gw-2") for i, s in enumerate(names)}
    report = Report(sessions=names, frames=frames, holder=holder)
    done = anyio.Event()

    with anyio.move_on_after(TIMEOUT) as deadline:
        await pipeline(report, done)
    report.timed_out = deadline.cancelled_caught
    return report


async def pipeline(report: Report, done: anyio.Event) -> None:
    """Start gateways, workers and clients; return once the gateways got every reply."""
    names, holder = report.sessions, report.holder
    async with litechan.connect("memory://") as broker, AsyncExitStack() as stack:
        audio = broker.ordered_topic("audio", partitions=8)
        replies = broker.lite_topics("replies", ttl=60.0, max_len=1_000)

        async with anyio.create_task_group() as tg:
            for gw in ("gw-1", "gw-2"):
                sub = await stack.enter_async_context(replies.subscriber(group="gateways", name=gw))
                # Each session's client connected to one gateway, which subscribes to its replies
                # before the first frame is sent (subscribing later would lose nothing either: G6).
                for session in names:
                    if holder[session] == gw:
                        await sub.subscribe(session)
                tg.start_soon(gateway, sub, gw, report, done)
            for name in ("worker-1", "worker-2"):
                tg.start_soon(worker, audio, replies, name, report)
            for session in names:
                tg.start_soon(client, audio, session, report.frames)

            await done.wait()
            tg.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()

    started = time.perf_counter()
    report = anyio.run(run, args.sessions, args.frames)
    elapsed = time.perf_counter() - started

    print(f"sessions:          {len(report.sessions)} (held by gw-1 and gw-2)")
    print(f"frames sent:       {report.expected} ({report.frames} per session)")
    print(f"replies delivered: {report.delivered} of {report.expected}")
    for name, answered in sorted(report.handled_by.items()):
        print(f"{name + ' answered:':<19}{len(answered)} sessions")
    if report.latencies:
        lat = sorted(report.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(
            f"frame -> reply:    p50 {statistics.median(lat) * 1e3:.2f} ms, "
            f"p99 {p99 * 1e3:.2f} ms (client send to gateway receive)"
        )
    print(f"elapsed:           {elapsed:.2f} s")

    problems = report.problems()
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for problem in problems[:20]:
            print(f"  - {problem}")
        return 1
    print("OK: every reply reached the gateway holding its session, in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
