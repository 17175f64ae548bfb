"""Envelopes: where a provider puts things in its JSON frames (issue 16, work in progress).

An :class:`Envelope` says, for one provider's server-to-client frames, which field names
the message type and which type values mean audio, the end of a segment, the end of a
context, an error or timestamps; which field holds the audio and how it is encoded; which
fields name the context and the segment; where an error's message is. Fields are
dotted paths (``"media.payload"``: the member ``payload`` of the object ``media``), up to
:data:`MAX_DEPTH` levels.

The built-ins follow the wire facts in docs/providers.md (and /work/shared/providers.md
section 7):

============================  =======  ===========================  =============  ==========
envelope                      type     audio                        context        segment
============================  =======  ===========================  =============  ==========
``CARTESIA``                  type     ``data`` (type chunk)        context_id     flush_id
``ELEVENLABS``                (none)   ``audio``                    contextId      (current)
``OPENAI_REALTIME``           type     ``delta`` (GA and beta)      response_id    item_id
``TWILIO_MEDIA``              event    ``media.payload`` (media)    streamSid      (current)
============================  =======  ===========================  =============  ==========

Not wired to the Sink yet: ``Sink(format, envelope=...)`` and the C scanner that reads any
envelope are the rest of issue 16 item 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

__all__ = ["Envelope", "CARTESIA", "ELEVENLABS", "OPENAI_REALTIME", "TWILIO_MEDIA",
           "BUILT_IN", "MAX_DEPTH"]

#: The deepest a path goes (``"a.b.c"``): enough for every provider known.
MAX_DEPTH = 3


def _path(name: str, value: Optional[str], *, required: bool = False) -> None:
    if value is None:
        if required:
            raise ValueError(f"Envelope.{name} is required")
        return
    if not isinstance(value, str):
        raise ValueError(f"Envelope.{name} must be a dotted path (str), not {value!r}")
    parts = value.split(".")
    if not all(parts) or len(parts) > MAX_DEPTH:
        raise ValueError(f"Envelope.{name} must be 1 to {MAX_DEPTH} non-empty names joined "
                         f"by '.', not {value!r}")


@dataclass(frozen=True)
class Envelope:
    """Where things are in one provider's frames (see the module docstring).

    ``type_key`` None means the frames have no type field: a frame with the audio field
    (not null) is audio, one whose ``final_key`` is true ends its context, one with the
    error message field is an error (ElevenLabs). ``segment_key`` None means a context has
    one segment at a time (its current one), ended by the ``segment_end`` types or the end
    of the context.
    """

    name: str
    type_key: Optional[str]
    audio_types: tuple[str, ...]
    audio_key: str
    context_key: Optional[str]
    segment_key: Optional[str] = None
    segment_end_types: tuple[str, ...] = ()
    context_end_types: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    timestamp_types: tuple[str, ...] = ()
    error_message_keys: tuple[str, ...] = ()
    final_key: Optional[str] = None
    audio_encoding: Literal["base64", "hex"] = "base64"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("Envelope.name must be a non-empty str")
        _path("type_key", self.type_key)
        _path("audio_key", self.audio_key, required=True)
        for name in ("context_key", "segment_key", "final_key"):
            _path(name, getattr(self, name))
        for key in self.error_message_keys:
            _path("error_message_keys", key)
        kinds = ("audio_types", "segment_end_types", "context_end_types", "error_types",
                 "timestamp_types")
        seen: dict[str, str] = {}
        for kind in kinds:
            values = getattr(self, kind)
            if not isinstance(values, tuple) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"Envelope.{kind} must be a tuple of non-empty str")
            for value in values:
                if value in seen:
                    raise ValueError(f"type {value!r} is in both {seen[value]} and {kind}")
                seen[value] = kind
        if self.type_key is None:
            if seen:
                raise ValueError("an envelope without type_key classifies frames by their "
                                 "fields: it has no type values")
            if self.final_key is None:
                raise ValueError("an envelope without type_key needs final_key (what ends "
                                 "a context)")
        elif not self.audio_types:
            raise ValueError("Envelope.audio_types must name at least one type")
        if self.audio_encoding not in ("base64", "hex"):
            raise ValueError(f"Envelope.audio_encoding must be 'base64' or 'hex', "
                             f"not {self.audio_encoding!r}")

    def kind_of(self, type_value: object) -> Optional[str]:
        """What a frame of this type is: ``"audio"``, ``"segment_end"``, ``"context_end"``,
        ``"error"``, ``"timestamps"``, or None (a type the envelope does not know)."""
        for kind in ("audio", "segment_end", "context_end", "error", "timestamp"):
            if type_value in getattr(self, f"{kind}_types"):
                return "timestamps" if kind == "timestamp" else kind
        return None


CARTESIA = Envelope(
    name="cartesia",
    type_key="type",
    audio_types=("chunk",),
    audio_key="data",
    context_key="context_id",
    segment_key="flush_id",
    segment_end_types=("flush_done",),
    context_end_types=("done",),
    error_types=("error",),
    timestamp_types=("timestamps", "phoneme_timestamps"),
    error_message_keys=("message", "error"),  # structured (2026-03-01 on), legacy
)

ELEVENLABS = Envelope(
    name="elevenlabs",
    type_key=None,
    audio_types=(),
    audio_key="audio",
    context_key="contextId",  # absent on the single stream-input endpoint: one context
    final_key="isFinal",
    error_message_keys=("message",),
)

OPENAI_REALTIME = Envelope(
    name="openai-realtime",
    type_key="type",
    audio_types=("response.output_audio.delta", "response.audio.delta"),  # GA, beta
    audio_key="delta",
    context_key="response_id",
    segment_key="item_id",
    segment_end_types=("response.output_audio.done", "response.audio.done"),
    context_end_types=("response.done",),
    error_types=("error",),
    error_message_keys=("error.message",),
)

TWILIO_MEDIA = Envelope(
    name="twilio-media",
    type_key="event",
    audio_types=("media",),
    audio_key="media.payload",
    context_key="streamSid",
    context_end_types=("stop",),
)

#: The built-in envelopes by name.
BUILT_IN: dict[str, Envelope] = {e.name: e for e in (CARTESIA, ELEVENLABS, OPENAI_REALTIME,
                                                     TWILIO_MEDIA)}
