"""The gateway: a WebSocket server between users and the two topics.

Why Starlette on uvicorn: it is the stack most Python services already run (FastAPI is
Starlette), so the gateway shows litechan where it will be used, next to ordinary HTTP routes
(``/healthz``, ``/stats``) on the same port; uvicorn's ``websockets`` protocol does the framing in
C. A bare ``websockets`` server would save a layer per message, and the link overhead that the
example reports includes that layer.

For each connection at ``/sessions/{session}`` the gateway:

1. subscribes to the session's lite topic in the ``gateways`` group. This takes the session over
   from whichever gateway held it (G7), and resumes after the last reply the user confirmed
   (G6), so a user that reconnects after a crash gets every reply it had not confirmed;
2. sends every audio frame it receives to the ordered topic ``audio``, keyed by the session, with
   a dedupe id per frame (G11): the frames a user sends again after reconnecting are stored once;
3. forwards every reply of the lite topic to the socket, and acks a reply only when the user
   confirms it (an :class:`~voice.wire.Ack`), so replies lost in a dying gateway's socket buffers
   are delivered again by the next one;
4. closes the socket with code 4001 when another connection takes the session over.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections import deque
from collections.abc import Iterator
from typing import Final

import anyio
import attrs
import msgspec
import structlog
import uvicorn
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream
from msgspec import Raw
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import litechan

from .wire import (
    FRAME_BYTES,
    FRAME_HEADER,
    GATEWAYS,
    TAKEN_OVER,
    Delivery,
    ack_decoder,
    declare,
    dedupe_id,
)

logger = structlog.get_logger("voice.gateway")

FRAME_SIZE: Final = FRAME_HEADER.size + FRAME_BYTES
GOING_AWAY: Final = 1001  # close code: the gateway is shutting down
UNSUPPORTED: Final = 1003  # close code: the user sent something that is not an audio frame or ack
POLICY: Final = 1008  # close code: the session id is not a valid lite topic name
_SEND_ERRORS: Final = (WebSocketDisconnect, OSError, RuntimeError)
_deliveries = msgspec.msgpack.Encoder()


@attrs.define
class GatewayStats:
    connections: int = 0  # accepted since start
    frames: int = 0  # audio frames sent to the ordered topic
    resent_frames: int = 0  # frames a user sent again after reconnecting, stored once (G11)
    replies: int = 0  # replies forwarded to users
    messages: int = 0  # WebSocket messages that carried them
    taken_over: int = 0  # sockets closed because their session moved to another connection
    bad_input: int = 0  # connections closed because of what the user sent


@attrs.define(eq=False)
class Connection:
    """One user's WebSocket, for one session."""

    ws: WebSocket
    session: str
    pending: deque[litechan.LiteMessage] = attrs.Factory(deque)  # forwarded, not confirmed
    scope: CancelScope | None = None
    finished: anyio.Event = attrs.Factory(anyio.Event)

    async def close(self, code: int) -> None:
        with contextlib.suppress(*_SEND_ERRORS):
            await self.ws.close(code)
        if self.scope is not None:
            self.scope.cancel()

    async def confirm(self, epoch: str, offset: int) -> None:
        """The user has every reply of *epoch* up to *offset*: ack them for the group."""
        pending = self.pending
        while pending and pending[0].offset <= offset and pending[0].epoch == epoch:
            await pending.popleft().ack()


@attrs.define(eq=False)
class Gateway:
    name: str
    audio: litechan.OrderedTopic
    replies: litechan.LiteTopics
    subscriber: litechan.Subscriber
    stats: GatewayStats = attrs.Factory(GatewayStats)
    holders: dict[str, Connection] = attrs.Factory(dict)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                WebSocketRoute("/sessions/{session}", self.session_endpoint),
                Route("/healthz", self.healthz),
                Route("/stats", self.stats_endpoint),
            ]
        )

    async def healthz(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def stats_endpoint(self, request: Request) -> JSONResponse:
        lite = await self.replies.stats(top=5)
        return JSONResponse(
            {
                "gateway": self.name,
                "sessions": len(self.holders),
                **attrs.asdict(self.stats),
                "backlog": lite.backlog,
                "top": [attrs.asdict(lag) for lag in lite.top],
            }
        )

    async def session_endpoint(self, ws: WebSocket) -> None:
        session: str = ws.path_params["session"]
        await ws.accept()
        self.stats.connections += 1
        conn = Connection(ws, session)
        previous = self.holders.get(session)
        self.holders[session] = conn
        try:
            if previous is not None:
                # The user came back to this gateway before we noticed its old socket died:
                # close that one and subscribe again, to resume after what the user confirmed.
                await previous.close(TAKEN_OVER)
                self.stats.taken_over += 1
                await previous.finished.wait()
                await self.subscriber.unsubscribe(session)
            try:
                channel = await self.subscriber.subscribe(session)
            except litechan.InvalidName:
                self.stats.bad_input += 1
                await conn.close(POLICY)
                return
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                tg.start_soon(self._downlink, conn, channel)
                await self._uplink(conn)
                tg.cancel_scope.cancel()
        finally:
            conn.finished.set()
            if self.holders.get(session) is conn:
                del self.holders[session]
                with anyio.CancelScope(shield=True):
                    await self.subscriber.unsubscribe(session)

    async def _uplink(self, conn: Connection) -> None:
        """Send the user's frames to ``audio`` in order; turn its acks into lite-topic acks."""
        session, ws = conn.session, conn.ws
        while True:
            try:
                message = await ws.receive()
            except _SEND_ERRORS:
                return
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | None = message.get("bytes")
            if data is not None:
                if len(data) != FRAME_SIZE:
                    await self._refuse(conn, f"a {len(data)}-byte binary message")
                    return
                turn, seq, _ = FRAME_HEADER.unpack_from(data)
                receipt = await self.audio.send(
                    session, data, dedupe_id=dedupe_id(session, turn, seq)
                )
                self.stats.frames += 1
                if receipt.duplicate:
                    self.stats.resent_frames += 1
                continue
            try:
                ack = ack_decoder.decode(message.get("text") or "")
            except msgspec.DecodeError:
                await self._refuse(conn, "a text message that is not an ack")
                return
            await conn.confirm(ack.epoch, ack.offset)

    async def _refuse(self, conn: Connection, what: str) -> None:
        self.stats.bad_input += 1
        logger.warning("voice.gateway.bad_input", session=conn.session, got=what)
        await conn.close(UNSUPPORTED)

    async def _downlink(self, conn: Connection, channel: litechan.Channel) -> None:
        """Forward the session's replies to the socket until the channel ends.

        The channel is read by this task and the socket written by another, so the replies
        that arrive while a write is under way leave together in the next message.
        """
        outbox_in, outbox = anyio.create_memory_object_stream[Delivery](math.inf)
        with outbox_in, outbox:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, conn, outbox)
                while True:
                    async for msg in channel:
                        conn.pending.append(msg)
                        delivery = Delivery(msg.epoch, msg.offset, msg.gap_before, Raw(msg.payload))
                        outbox_in.send_nowait(delivery)
                    reason = channel.end_reason
                    if reason is litechan.EndReason.EXPIRED:
                        # Idle for the ttl: its next reply creates it again (new epoch).
                        conn.pending.clear()
                        channel = await self.subscriber.subscribe(conn.session)
                        continue
                    if reason is litechan.EndReason.REVOKED:
                        logger.info(
                            "voice.gateway.taken_over", session=conn.session, gateway=self.name
                        )
                        self.stats.taken_over += 1
                        await conn.close(TAKEN_OVER)
                    elif reason is litechan.EndReason.CLOSED:  # this gateway is stopping
                        await conn.close(GOING_AWAY)
                    tg.cancel_scope.cancel()  # UNSUBSCRIBED: the connection is ending
                    return

    async def _write(self, conn: Connection, outbox: MemoryObjectReceiveStream[Delivery]) -> None:
        async for first in outbox:
            batch = [first]
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    batch.append(outbox.receive_nowait())
            try:
                await conn.ws.send_bytes(_deliveries.encode(batch))
            except _SEND_ERRORS:
                await conn.close(GOING_AWAY)
                return
            self.stats.replies += len(batch)
            self.stats.messages += 1


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket: users can connect (and wait in its backlog) from now on."""
    sock = socket.create_server((host, port), backlog=4096)
    sock.set_inheritable(True)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host, so several can share a loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_gateway(
    broker: litechan.Broker,
    name: str,
    sock: socket.socket,
    *,
    stop: anyio.Event,
    stats: GatewayStats | None = None,
) -> None:
    """Serve gateway *name* on *sock* until *stop* is set, then close every connection."""
    audio, replies = declare(broker)
    async with replies.subscriber(group=GATEWAYS, name=name) as subscriber:
        gateway = Gateway(name, audio, replies, subscriber, stats or GatewayStats())
        config = uvicorn.Config(
            gateway.app(),
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = _EmbeddedServer(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await stop.wait()
            server.should_exit = True
