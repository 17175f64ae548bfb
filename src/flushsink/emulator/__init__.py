"""A local Cartesia-compatible TTS websocket server, for tests, demos and benchmarks.

The emulator speaks the protocol described in ``docs/protocol.md`` (the ``/tts/websocket``
endpoint): contexts multiplexed on one socket and generated concurrently, ``continue`` /
``flush`` / ``flush_done`` / ``done``, ``cancel``, word and phoneme timestamps, both error
shapes, the idle close, and a set of fault modes. Its audio is synthetic but speech-like
and a pure function of (text, voice, format, speed), so a test can predict every byte it
receives::

    async with Emulator() as emu:                     # binds 127.0.0.1 on a free port
        async with websockets.connect(emu.ws_url) as ws:
            ...
        expected = render("Stay hungry, ", voice_id, AudioFormat("pcm_s16le", 44100))

    with Emulator(flush_id_base=0).running_in_thread() as emu:   # from sync code
        ...

The package, read from the oracle to the socket:

- :mod:`.speech`: the audio and its timestamps (``render`` and friends), the tests'
  oracle; numpy only, no websockets;
- :mod:`.faults`: the fault modes, what each does and how one is written (``Fault``,
  ``parse_faults``);
- :mod:`.connection`: one accepted websocket: how requests become segments (its
  docstring), the contexts streaming concurrently, the faults performed, the
  ``ConnectionLog``;
- :mod:`._local`: ``LocalServer``: the address and the ways to run a server (``async
  with``, a thread, ``serve_forever``), which every provider's emulator shares;
- :mod:`.server`: ``Emulator``: the handshake, the options, the stats.
- :mod:`.openai_realtime`: ``OpenAIRealtimeEmulator``: OpenAI's Realtime websocket (GA and
  beta event names), speaking each response with the renderer.
- :mod:`.elevenlabs`: ``ElevenLabsEmulator``: ElevenLabs' ``stream-input`` and
  ``multi-stream-input`` websockets, with character alignment from the renderer.
- :mod:`.twilio`: ``TwilioMediaSender`` and ``stream_call``: the caller's side of a
  Twilio (or Telnyx) Media Stream, a *client* that streams a call's rendered mu-law audio
  into the user's server and records what the server sends back.

Import the names below from here, e.g. ``from flushsink.emulator import Emulator, render``.
The renderer's come with the package; the server side's and the Twilio sender's (and
websockets) are imported the first time one of them is used, so the oracle works where
websockets cannot be imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .speech import render, render_phoneme_timestamps, render_samples, render_timestamps

if TYPE_CHECKING:
    from .connection import ConnectionLog
    from .elevenlabs import ElevenLabsEmulator, ElevenLabsLog
    from .faults import FAULT_ACTIONS, Fault, parse_faults
    from .openai_realtime import OpenAIRealtimeEmulator
    from .server import (
        DEFAULT_VERSION,
        STRUCTURED_ERRORS_SINCE,
        WS_PATH,
        Emulator,
        EmulatorStats,
        Rejection,
    )
    from .twilio import CallLog, TwilioMediaSender, stream_call, stream_call_sync

__all__ = [
    "Emulator",
    "EmulatorStats",
    "ConnectionLog",
    "Rejection",
    "Fault",
    "parse_faults",
    "render",
    "render_samples",
    "render_timestamps",
    "render_phoneme_timestamps",
    "WS_PATH",
    "DEFAULT_VERSION",
    "STRUCTURED_ERRORS_SINCE",
    "FAULT_ACTIONS",
    "OpenAIRealtimeEmulator",
    "ElevenLabsEmulator",
    "ElevenLabsLog",
    "TwilioMediaSender",
    "CallLog",
    "stream_call",
    "stream_call_sync",
]

# The names the server side (and the Twilio sender) define, by module: imported on first
# use (PEP 562).
_SERVER_SIDE = {
    "Emulator": "server",
    "EmulatorStats": "server",
    "Rejection": "server",
    "WS_PATH": "server",
    "DEFAULT_VERSION": "server",
    "STRUCTURED_ERRORS_SINCE": "server",
    "ConnectionLog": "connection",
    "IDLE_CLOSE_REASON": "connection",
    "Fault": "faults",
    "FaultSpec": "faults",
    "parse_faults": "faults",
    "FAULT_ACTIONS": "faults",
    "OpenAIRealtimeEmulator": "openai_realtime",
    "ElevenLabsEmulator": "elevenlabs",
    "ElevenLabsLog": "elevenlabs",
    "TwilioMediaSender": "twilio",
    "CallLog": "twilio",
    "stream_call": "twilio",
    "stream_call_sync": "twilio",
}


def __getattr__(name: str) -> Any:
    module = _SERVER_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SERVER_SIDE))
