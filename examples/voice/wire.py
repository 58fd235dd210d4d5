"""What travels between users, gateways and workers.

Uplink, user -> gateway, on a WebSocket at ``/sessions/{session}``:

- binary messages: one 20 ms audio frame each, ``FRAME_HEADER`` (turn, seq, flags) followed by
  640 bytes of PCM. The gateway forwards them as they are, as the payload of
  ``audio.send(session, frame, dedupe_id=...)``;
- text messages: an :class:`Ack` (JSON), the user's confirmation of the replies it received,
  which the gateway turns into lite-topic acks.

Downlink, worker -> lite topic -> gateway -> user: each lite message's payload is one
:class:`Reply` (msgpack); the gateway wraps the messages it forwards in a :class:`Delivery` list
with their offsets, so the user can confirm them.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

import msgspec

import litechan

SAMPLE_RATE: Final = 16_000
FRAME_SECONDS: Final = 0.020
FRAME_SAMPLES: Final = int(SAMPLE_RATE * FRAME_SECONDS)  # 320
FRAME_BYTES: Final = FRAME_SAMPLES * 2  # 16-bit mono: 640 bytes per 20 ms

FRAME_HEADER: Final = struct.Struct("!IHB")  # turn, seq, flags
LAST_FRAME: Final = 0x01  # flags: the last frame of the user's utterance

AUDIO_TOPIC: Final = "audio"
PARTITIONS: Final = 16
REPLIES: Final = "replies"
REPLY_TTL: Final = 300.0  # seconds: a session's reply channel outlives a pause of five minutes
REPLY_MAX_LEN: Final = 10_000
WORKERS: Final = "workers"  # the consumer group of the ordered topic
GATEWAYS: Final = "gateways"  # the subscriber group of the lite topics

TAKEN_OVER: Final = 4001  # WebSocket close code: the session moved to another connection

Kind = Literal["partial", "transcript", "token", "audio", "done"]
PARTIAL_EVERY: Final = 10  # frames: ASR emits a partial transcript after frame 9, 19, 29, ...


class Frame(msgspec.Struct, frozen=True):
    """One uplink audio frame, decoded."""

    turn: int
    seq: int
    last: bool
    pcm: bytes

    def encode(self) -> bytes:
        return FRAME_HEADER.pack(self.turn, self.seq, LAST_FRAME if self.last else 0) + self.pcm

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """Decode an uplink frame; raise ``ValueError`` when it is not one."""
        if len(data) != FRAME_HEADER.size + FRAME_BYTES:
            raise ValueError(f"an audio frame is {FRAME_HEADER.size + FRAME_BYTES} bytes")
        turn, seq, flags = FRAME_HEADER.unpack_from(data)
        return cls(turn, seq, bool(flags & LAST_FRAME), data[FRAME_HEADER.size :])


def dedupe_id(session: str, turn: int, seq: int) -> str:
    """The id that makes a frame sent twice (a user's resend after reconnecting) stored once."""
    return f"{session}/{turn}/{seq}"


class Reply(msgspec.Struct, array_like=True, frozen=True):
    """One reply of a worker for a session's turn: the payload of a lite-topic message.

    ``seq`` counts the replies of one ``kind`` within the turn from 0, so a user can tell a
    missing, repeated or reordered reply of each kind. The first audio frame carries
    ``model_s``, the simulated model time between the end of speech and that frame, which the
    user subtracts from what it measured to get the link's own overhead. ``done`` carries
    ``totals``: how many partials, tokens and audio frames the turn's reply has.
    """

    session: str
    turn: int
    kind: Kind
    seq: int
    data: bytes = b""
    model_s: float = 0.0
    totals: tuple[int, int, int] | None = None


class Delivery(msgspec.Struct, array_like=True, frozen=True):
    """A lite-topic message as the gateway forwards it to the user."""

    epoch: str
    offset: int
    gap_before: int
    reply: msgspec.Raw  # a Reply, still encoded: the gateway does not need to read it


class Ack(msgspec.Struct, frozen=True):
    """The user received every delivery of ``epoch`` up to ``offset``."""

    epoch: str
    offset: int


reply_encoder: Final = msgspec.msgpack.Encoder()
reply_decoder: Final = msgspec.msgpack.Decoder(Reply)
deliveries_decoder: Final = msgspec.msgpack.Decoder(list[Delivery])
ack_encoder: Final = msgspec.json.Encoder()
ack_decoder: Final = msgspec.json.Decoder(Ack)


def declare(broker: litechan.Broker) -> tuple[litechan.OrderedTopic, litechan.LiteTopics]:
    """The two topics of the link, declared the same way by every gateway and worker."""
    audio = broker.ordered_topic(AUDIO_TOPIC, partitions=PARTITIONS)
    replies = broker.lite_topics(REPLIES, ttl=REPLY_TTL, max_len=REPLY_MAX_LEN)
    return audio, replies
