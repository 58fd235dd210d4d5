"""Simulated users: each talks to a gateway over a WebSocket, listens, and checks every reply.

A user runs its turns one after the other: it streams an utterance as 20 ms PCM frames at the
pace of speech, waits for the reply, "plays" it (waits as long as the reply's audio lasts),
thinks, and speaks again. Meanwhile it checks every reply it receives:

- *misrouted*: a reply for another session, or for a turn it has not spoken;
- *duplicate*: a reply it already has (a redelivery after a gateway or worker died): dropped;
- *out of order*: a reply whose number is not the next one of its kind in the turn;
- *lost*: a reply that the turn's ``done`` counts but that never came, a gap reported by the lite
  topic (``gap_before``), or a whole turn without ``done`` within the reply timeout.

It confirms what it received (an :class:`~voice.wire.Ack` per batch and at the end of each
reply), so the gateway acks only what reached the user. When its socket dies it connects to
the next gateway with the same session id and sends the current turn's frames again; the
gateway's dedupe stores each frame once. With ``roam``, it sometimes moves to the other
gateway between turns without closing the old socket, as a phone that changes networks does,
and expects the old gateway to close that socket (code 4001).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from typing import Final

import anyio
import attrs
import msgspec
from anyio.abc import TaskGroup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .audio import VOICES, is_pcm_frame, utterance
from .stages import Profile
from .wire import (
    FRAME_SECONDS,
    TAKEN_OVER,
    Ack,
    Delivery,
    Frame,
    Reply,
    ack_encoder,
    deliveries_decoder,
    reply_decoder,
)

ACK_EVERY: Final = 16  # deliveries: a user confirms at least this often, and at every `done`
RETIRED_GRACE: Final = 10.0  # seconds a gateway has to close a socket whose session moved away
_CONNECT_ERRORS: Final = (OSError, InvalidHandshake, TimeoutError)


class Tally(msgspec.Struct, kw_only=True):
    """What the users of one process saw; summed over processes for the report."""

    sessions: int = 0
    turns_expected: int = 0
    turns_done: int = 0
    turns_lost: int = 0  # no `done` within the reply timeout
    frames_sent: int = 0
    replies: int = 0  # distinct replies received
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    misrouted: int = 0
    corrupt: int = 0
    reconnects: int = 0
    roams: int = 0
    roams_closed: int = 0  # sockets left behind by a roam that their gateway closed with 4001
    stale_sockets: int = 0  # sockets left behind by a roam that stayed open
    unexpected_takeovers: int = 0  # the current socket closed with 4001 without a roam
    # per completed turn: time to first audio, to the full reply, and the model time (seconds)
    first_audio: list[float] = msgspec.field(default_factory=list)
    full_reply: list[float] = msgspec.field(default_factory=list)
    model: list[float] = msgspec.field(default_factory=list)


@attrs.define(eq=False)
class _Turn:
    number: int
    seen: dict[str, set[int]] = attrs.Factory(dict)  # kind -> reply numbers received
    first_audio: float | None = None
    model_s: float = 0.0
    audio_frames: int = 0
    done_at: float | None = None
    done: anyio.Event = attrs.Factory(anyio.Event)


@attrs.define(eq=False)
class ReplyChecker:
    """Checks the replies one user receives against what it said; counts into a tally."""

    session: str
    tally: Tally
    turn: _Turn = attrs.Factory(lambda: _Turn(-1))
    completed: set[int] = attrs.Factory(set)

    def begin(self, number: int) -> _Turn:
        """The user starts speaking turn *number*."""
        self.turn = _Turn(number)
        return self.turn

    def receive(self, delivery: Delivery) -> bool:
        """Check one reply; return whether it ends its turn's reply."""
        self.tally.lost += delivery.gap_before
        try:
            reply: Reply = reply_decoder.decode(delivery.reply)
        except msgspec.DecodeError:
            self.tally.corrupt += 1
            return False
        turn = self.turn
        if reply.session != self.session or reply.turn > turn.number:
            self.tally.misrouted += 1
            return False
        if reply.turn != turn.number or reply.turn in self.completed:
            self.tally.duplicates += 1  # a turn answered again after a worker died
            return False
        seen = turn.seen.setdefault(reply.kind, set())
        if reply.seq in seen:
            self.tally.duplicates += 1
            return False
        if reply.seq != len(seen):
            self.tally.out_of_order += 1
        seen.add(reply.seq)
        self.tally.replies += 1
        now = time.perf_counter()
        if reply.kind == "audio":
            if not is_pcm_frame(reply.data):
                self.tally.corrupt += 1
            if turn.first_audio is None:
                turn.first_audio, turn.model_s = now, reply.model_s
        elif reply.kind == "done":
            self._finish(turn, reply, now)
            return True
        return False

    def _finish(self, turn: _Turn, done: Reply, now: float) -> None:
        partials, tokens, audio = done.totals or (math.inf, math.inf, math.inf)
        for kind, expected in (("partial", partials), ("token", tokens), ("audio", audio)):
            got = len(turn.seen.get(kind, ()))
            if got < expected:
                self.tally.lost += int(min(expected, 1_000_000) - got)
        if "transcript" not in turn.seen:
            self.tally.lost += 1
        turn.audio_frames = len(turn.seen.get("audio", ()))
        turn.done_at = now
        self.completed.add(turn.number)
        turn.done.set()


@attrs.define(eq=False)
class User:
    session: str
    gateways: Sequence[str]  # base URLs, "ws://host:port"
    gateway: int  # index of the gateway this user talks to now
    turns: int
    profile: Profile
    tally: Tally
    rng: random.Random
    tg: TaskGroup
    roam: float = 0.0
    reply_timeout: float = 30.0
    ws: ClientConnection | None = None
    switch_lock: anyio.Lock = attrs.Factory(anyio.Lock)  # held while changing sockets
    switching: bool = False  # frames wait in `sent` for the new socket
    sent: list[bytes] = attrs.Factory(list)  # the current turn's frames sent so far
    checker: ReplyChecker = attrs.field(init=False)
    retired: set[ClientConnection] = attrs.Factory(set)
    leaving: bool = False
    speech_end: float = 0.0  # when the last frame of the current utterance was sent

    def __attrs_post_init__(self) -> None:
        self.checker = ReplyChecker(self.session, self.tally)

    # -- talking ---------------------------------------------------------------------------

    async def run(self, delay: float = 0.0) -> None:
        await anyio.sleep(delay)
        async with self.switch_lock:
            await self._connect(self.gateway)
        voice = int(self.session.rsplit("-", 1)[-1]) % len(VOICES)
        for number in range(self.turns):
            if number and self.rng.random() < self.roam:
                await self._roam()
            await self._speak(voice, number)
            with anyio.move_on_after(self.reply_timeout):
                await self.checker.turn.done.wait()
            turn = self.checker.turn
            if turn.done_at is None or turn.first_audio is None:
                self.tally.turns_lost += 1
                self.tally.lost += 1
                continue
            self.tally.turns_done += 1
            self.tally.first_audio.append(turn.first_audio - self.speech_end)
            self.tally.full_reply.append(turn.done_at - self.speech_end)
            self.tally.model.append(turn.model_s)
            playback_end = turn.first_audio + turn.audio_frames * FRAME_SECONDS
            think = self.rng.uniform(*self.profile.think)
            await anyio.sleep(max(0.0, playback_end - time.perf_counter()) + think)
        await self._leave()

    async def _speak(self, voice: int, number: int) -> None:
        """Stream one utterance at the pace of speech: one 20 ms frame every 20 ms."""
        frames = utterance(voice, number, self.rng.randint(*self.profile.utterance))
        async with self.switch_lock:
            self.checker.begin(number)
            self.sent = []
        start = time.perf_counter()
        for seq, pcm in enumerate(frames):
            delay = start + seq * FRAME_SECONDS - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            await self._send(Frame(number, seq, seq == len(frames) - 1, pcm).encode())
        self.speech_end = time.perf_counter()

    async def _send(self, frame: bytes) -> None:
        self.sent.append(frame)
        self.tally.frames_sent += 1
        ws = self.ws
        if ws is not None and not self.switching:
            # On a closed socket, its reader reconnects and sends this turn's frames again.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(frame)

    # -- connections ------------------------------------------------------------------------

    async def _connect(self, first: int) -> ClientConnection:
        """Connect to gateway *first*, or the next ones in turn; hold ``switch_lock``."""
        for attempt in range(10_000):
            index = (first + attempt) % len(self.gateways)
            url = f"{self.gateways[index]}/sessions/{self.session}"
            try:
                ws = await connect(url, compression=None, open_timeout=5, max_queue=None)
            except _CONNECT_ERRORS:
                await anyio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))
                continue
            self.gateway, self.ws = index, ws
            self.tg.start_soon(self._read, ws)
            return ws
        raise RuntimeError(f"{self.session}: no gateway accepts connections")

    async def _reconnect(self, dead: ClientConnection) -> None:
        async with self.switch_lock:
            if self.ws is not dead or self.leaving:
                return
            self.ws, self.switching = None, True
            self.tally.reconnects += 1
            try:
                ws = await self._connect(self.gateway + 1)
                # This turn's frames, again: the gateway's dedupe ids store each one once. The
                # talker appends while we send; it sends by itself once `switching` is off.
                sent = 0
                while sent < len(self.sent):
                    await ws.send(self.sent[sent])
                    sent += 1
            except ConnectionClosed:
                pass  # that one died too: its reader starts over
            finally:
                self.switching = False

    async def _roam(self) -> None:
        """Move to the next gateway without closing the current socket."""
        async with self.switch_lock:
            old = self.ws
            await self._connect(self.gateway + 1)
            if old is not None and old is not self.ws:
                self.retired.add(old)
                self.tally.roams += 1

    async def _leave(self) -> None:
        async with self.switch_lock:
            self.leaving = True
            ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()
        if self.retired:
            with anyio.move_on_after(RETIRED_GRACE):
                for old in list(self.retired):
                    await old.wait_closed()
            for old in list(self.retired):
                self.tally.stale_sockets += 1
                await old.close()

    # -- listening --------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        unconfirmed = 0
        try:
            async for message in ws:
                if isinstance(message, str):
                    self.tally.corrupt += 1
                    continue
                try:
                    deliveries = deliveries_decoder.decode(message)
                except msgspec.DecodeError:
                    self.tally.corrupt += 1
                    continue
                finished = False
                for delivery in deliveries:
                    finished |= self.checker.receive(delivery)
                unconfirmed += len(deliveries)
                if deliveries and (finished or unconfirmed >= ACK_EVERY):
                    last = deliveries[-1]
                    await ws.send(ack_encoder.encode(Ack(last.epoch, last.offset)).decode())
                    unconfirmed = 0
        except ConnectionClosed:
            pass
        if ws in self.retired:
            self.retired.discard(ws)
            if ws.close_code == TAKEN_OVER:
                self.tally.roams_closed += 1
            return
        if ws.close_code == TAKEN_OVER and not self.leaving:
            self.tally.unexpected_takeovers += 1
        await self._reconnect(ws)


async def run_users(
    gateways: Sequence[str],
    *,
    sessions: int,
    turns: int,
    profile: Profile,
    tally: Tally,
    run_id: str,
    seed: int = 0,
    first: int = 0,
    roam: float = 0.0,
    ramp: float = 2.0,
    reply_timeout: float = 30.0,
) -> Tally:
    """Run *sessions* users of *turns* turns each, started evenly over *ramp* seconds.

    Users are numbered from *first*; user ``i`` starts on gateway ``i % len(gateways)``.
    """
    tally.sessions += sessions
    tally.turns_expected += sessions * turns
    async with anyio.create_task_group() as tg:
        for i in range(first, first + sessions):
            user = User(
                session=f"{run_id}-{i:05d}",
                gateways=gateways,
                gateway=i % len(gateways),
                turns=turns,
                profile=profile,
                tally=tally,
                rng=random.Random(f"{seed}/{i}"),
                tg=tg,
                roam=roam,
                reply_timeout=reply_timeout,
            )
            tg.start_soon(user.run, ramp * (i - first) / max(1, sessions))
    return tally
