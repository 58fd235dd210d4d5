"""A reference voice-agent pipeline on litechan: simulated users, gateways and workers.

The link it builds is the one of the LiteTopic pattern::

    user ==WebSocket==> gateway --send(session, frame)--> ordered topic "audio" --> worker
      ^                    |                                                        |
      +====================+ <-- lite topic "replies/<session>" <-- publish(session, reply)

- :mod:`voice.wire` — what travels on the WebSocket and on the topics;
- :mod:`voice.audio` — generated 16 kHz 16-bit mono PCM, cut in 20 ms frames;
- :mod:`voice.stages` — the ASR, LLM and TTS stages as Protocols, with simulated defaults;
- :mod:`voice.worker` — consumes ``audio`` in a consumer group and answers on lite topics;
- :mod:`voice.gateway` — the Starlette WebSocket server between users and topics;
- :mod:`voice.users` — simulated users that talk, listen, measure and check every reply;
- :mod:`voice.report` — the figures of a run, and the verdict;
- :mod:`voice.run` — one process on ``memory://``, or separate processes on Redis, with chaos.

Run it with ``python examples/voice_agent.py --help``.
"""
