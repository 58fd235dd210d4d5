"""The business process: consumes ``audio`` in a consumer group and answers on lite topics.

Frames reach a worker in key order: the next frame of a session only after the previous one is
acked, while other sessions go on (``ordering="key"``). Each frame is fed to the session's ASR
and acked once its partial transcript, if any, is published. The last frame of an utterance is
acked only when the whole reply (transcript, tokens, audio, ``done``) is published: a worker
that dies in the middle of a reply leaves that frame un-acked, and the worker that takes the
partition over answers the turn again, from the start (the user drops what it already has).

Each utterance is heard and answered by its own task, so a session waiting seconds for its LLM
holds only its own key; the consumer's ``max_in_flight`` bounds how many sessions a worker
answers at once.
"""

from __future__ import annotations

import math
import time
from typing import Final

import anyio
import attrs
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import litechan

from .stages import Stages, Transcription
from .wire import PARTIAL_EVERY, WORKERS, Frame, Reply, declare, reply_encoder

logger = structlog.get_logger("voice.worker")

MAX_IN_FLIGHT: Final = 10_000  # sessions one worker may be answering at the same time
STALE_UTTERANCE: Final = 120.0  # seconds: forget an utterance whose user went silent mid-way


@attrs.define
class WorkerStats:
    frames: int = 0
    turns: int = 0
    redelivered: int = 0  # frames delivered again after another worker died or moved
    abandoned: int = 0  # replies stopped because their partition moved to another worker
    rejected: int = 0  # messages that were not audio frames (dead-lettered)
    failed: int = 0  # stage errors (the frame is nacked and tried again)


@attrs.define(eq=False)
class Utterance:
    """The frames of one session's utterance, handled in order by one task."""

    inbox: MemoryObjectSendStream[litechan.Message]
    touched: float


@attrs.define(eq=False)
class Worker:
    """One worker's state: a task per utterance being heard or answered."""

    name: str
    consumer: litechan.Consumer
    replies: litechan.LiteTopics
    stages: Stages
    tg: TaskGroup
    stats: WorkerStats = attrs.Factory(WorkerStats)
    utterances: dict[str, Utterance] = attrs.Factory(dict)

    def dispatch(self, msg: litechan.Message) -> None:
        """Hand *msg* to its session's task, starting one for a new utterance."""
        utterance = self.utterances.get(msg.key)
        if utterance is None:
            inbox, frames = anyio.create_memory_object_stream[litechan.Message](math.inf)
            utterance = self.utterances[msg.key] = Utterance(inbox, time.monotonic())
            self.tg.start_soon(self._hear, msg.key, utterance, frames)
        utterance.touched = time.monotonic()
        utterance.inbox.send_nowait(msg)

    async def _hear(
        self,
        session: str,
        utterance: Utterance,
        frames: MemoryObjectReceiveStream[litechan.Message],
    ) -> None:
        """Feed one utterance's frames to the ASR in order, then answer it."""
        transcription: Transcription | None = None
        turn = -1
        with frames:
            async for msg in frames:
                try:
                    frame = Frame.decode(msg.payload)
                except ValueError as exc:
                    self.stats.rejected += 1
                    await msg.reject(f"not an audio frame: {exc}")
                    continue
                self.stats.frames += 1
                if msg.delivery_count > 1:
                    self.stats.redelivered += 1
                if transcription is None or frame.turn != turn:
                    # The first frame we see of this utterance: seq > 0 when we took it over.
                    transcription = self.stages.asr.open(session, frame.turn, frame.seq)
                    turn = frame.turn
                try:
                    partial = await transcription.feed(frame)
                    if partial is not None:
                        seq = frame.seq // PARTIAL_EVERY
                        await self._publish(Reply(session, turn, "partial", seq, partial.encode()))
                    if frame.last:
                        self._forget(session, utterance)
                        await self._respond(msg, frame, transcription, time.perf_counter())
                except Exception:
                    # A stage failed: try the frame again later (dead-lettered after
                    # max_deliveries), with a new transcription.
                    self.stats.failed += 1
                    self._forget(session, utterance)
                    logger.exception("voice.worker.stage_failed", session=session, turn=turn)
                    await msg.nack(delay=0.5)
                    return
                await msg.ack()
                if frame.last:
                    return

    def _forget(self, session: str, utterance: Utterance) -> None:
        """Send the session's next frames to a new task (this one is answering, or failed)."""
        if self.utterances.get(session) is utterance:
            del self.utterances[session]
            utterance.inbox.close()

    async def _respond(
        self, msg: litechan.Message, last: Frame, transcription: Transcription, t0: float
    ) -> None:
        """Run LLM and TTS for the turn; return once every reply is published."""
        session, turn = msg.key, last.turn
        outbox_in, outbox = anyio.create_memory_object_stream[Reply](math.inf)
        tokens_in, tokens = anyio.create_memory_object_stream[str](math.inf)
        with outbox, tokens_in, tokens:  # closed even if a task is cancelled before it starts
            async with anyio.create_task_group() as tg:
                # Replies are published in order by one task, so the stages never wait for the
                # link: what the user measures beyond the stages' own time is the link's overhead.
                tg.start_soon(self._publish_all, msg, outbox, tg)
                with outbox_in:
                    transcript = await transcription.finish()
                    outbox_in.send_nowait(
                        Reply(session, turn, "transcript", 0, transcript.encode())
                    )
                    count = _Counter()
                    tg.start_soon(
                        self._think, session, turn, transcript, tokens_in, outbox_in, count
                    )
                    frames = 0
                    async for pcm in self.stages.tts.synthesize(session, turn, tokens):
                        model_s = time.perf_counter() - t0 if frames == 0 else 0.0
                        outbox_in.send_nowait(
                            Reply(session, turn, "audio", frames, pcm, model_s=model_s)
                        )
                        frames += 1
                    totals = ((last.seq + 1) // PARTIAL_EVERY, count.value, frames)
                    outbox_in.send_nowait(Reply(session, turn, "done", 0, totals=totals))
        if not tg.cancel_scope.cancelled_caught:
            self.stats.turns += 1

    async def _think(
        self,
        session: str,
        turn: int,
        transcript: str,
        tokens_in: MemoryObjectSendStream[str],
        outbox_in: MemoryObjectSendStream[Reply],
        count: _Counter,
    ) -> None:
        """Stream the LLM's tokens to the user and to the TTS."""
        with tokens_in:
            async for token in self.stages.llm.complete(session, turn, transcript):
                outbox_in.send_nowait(Reply(session, turn, "token", count.value, token.encode()))
                count.value += 1
                tokens_in.send_nowait(token)

    async def _publish_all(
        self,
        msg: litechan.Message,
        outbox: MemoryObjectReceiveStream[Reply],
        scope: TaskGroup,
    ) -> None:
        with outbox:
            async for reply in outbox:
                if msg.partition not in self.consumer.partitions:
                    # Another worker owns the session now and answers the turn again.
                    self.stats.abandoned += 1
                    scope.cancel_scope.cancel()
                    return
                await self._publish(reply)

    async def _publish(self, reply: Reply) -> None:
        await self.replies.publish(reply.session, reply_encoder.encode(reply))

    def forget_stale(self) -> None:
        """End the tasks of utterances whose user stopped sending frames mid-way long ago."""
        now = time.monotonic()
        for session, utterance in list(self.utterances.items()):
            if now - utterance.touched > STALE_UTTERANCE:
                self._forget(session, utterance)


@attrs.define
class _Counter:
    value: int = 0


async def run_worker(
    broker: litechan.Broker,
    name: str,
    stages: Stages,
    *,
    started: anyio.Event | None = None,
    stats: WorkerStats | None = None,
) -> None:
    """Consume ``audio`` as member *name* of the ``workers`` group until cancelled."""
    audio, replies = declare(broker)
    async with (
        audio.consumer(
            group=WORKERS, name=name, ordering="key", max_in_flight=MAX_IN_FLIGHT
        ) as consumer,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(name, consumer, replies, stages, tg, stats or WorkerStats())
        tg.start_soon(_sweep, worker)
        if started is not None:
            started.set()
        async for msg in consumer:
            worker.dispatch(msg)


async def _sweep(worker: Worker) -> None:
    while True:
        await anyio.sleep(STALE_UTTERANCE / 4)
        worker.forget_stale()
