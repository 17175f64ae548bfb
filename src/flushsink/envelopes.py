"""Envelopes: where a provider puts things in its JSON frames (issue 16).

An :class:`Envelope` says, for one provider's server-to-client frames, which field names
the message type and which type values mean audio, the end of a segment, the end of a
context, an error or timestamps; which field holds the audio and how it is encoded; which
fields name the context and the segment; where an error's message is. A field is a
dotted path (``"media.payload"``: the member ``payload`` of the object ``media``), up to
:data:`MAX_DEPTH` names deep; names are ASCII, at most :data:`MAX_NAME` characters, and
cannot hold a ``.``.

``Sink(format, envelope=...)`` reads frames by it (docs/sink.md "Envelopes"); the
built-ins follow the wire facts in docs/providers.md:

============================  =======  ===========================  =============  ==========
envelope                      type     audio                        context        segment
============================  =======  ===========================  =============  ==========
``CARTESIA`` (the default)    type     ``data`` (type chunk)        context_id     flush_id
``ELEVENLABS``                (none)   ``audio``                    contextId      (current)
``OPENAI_REALTIME``           type     ``delta`` (GA and beta)      response_id    (current)
``TWILIO_MEDIA``              event    ``media.payload`` (media)    streamSid      (current)
============================  =======  ===========================  =============  ==========

OpenAI's ``response.created`` and ``response.done`` name their response at
``response.id`` (``context_fallback_key``), its other events at ``response_id``.

A segment key names an integer member (0 to 2**62, as Cartesia's ``flush_id``): the
Sink's labels are integers. Without one, a context has one segment at a time, its current
one, ended by the ``segment_end_types`` (or the end of the context); the Sink numbers
them 0, 1, 2, ... OpenAI Realtime's ``item_id`` is a string, so ``OPENAI_REALTIME`` has
no segment key: a response's audio parts come one after the other, each ended by its
``response.output_audio.done``, so the current segment is the item's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

__all__ = ["Envelope", "CARTESIA", "ELEVENLABS", "OPENAI_REALTIME", "TWILIO_MEDIA",
           "BUILT_IN", "MAX_DEPTH", "MAX_NAME", "KINDS"]

#: The most names a path may have (``"a.b.c"`` has 3).
MAX_DEPTH = 16
#: The longest a name in a path may be.
MAX_NAME = 64
#: What a frame can be, as :meth:`Envelope.kind_of` says it.
KINDS = ("audio", "segment_end", "context_end", "error", "timestamps",
         "phoneme_timestamps")

_KIND_FIELDS = {"audio": "audio_types", "segment_end": "segment_end_types",
                "context_end": "context_end_types", "error": "error_types",
                "timestamps": "timestamp_types",
                "phoneme_timestamps": "phoneme_timestamp_types"}


def _path(name: str, value: Optional[str], *, required: bool = False) -> None:
    if value is None:
        if required:
            raise ValueError(f"Envelope.{name} is required")
        return
    if not isinstance(value, str):
        raise ValueError(f"Envelope.{name} must be a dotted path (str), not {value!r}")
    parts = value.split(".")
    if not all(parts) or len(parts) > MAX_DEPTH or not value.isascii() \
            or any(len(part) > MAX_NAME for part in parts):
        raise ValueError(f"Envelope.{name} must be 1 to {MAX_DEPTH} non-empty ASCII names "
                         f"of at most {MAX_NAME} characters joined by '.', not {value!r}")


@dataclass(frozen=True)
class Envelope:
    """Where things are in one provider's frames (see the module docstring).

    ``type_key`` None means the frames have no type field (ElevenLabs): a frame whose
    audio field is a string is audio, one whose ``final_key`` is true ends its context
    (after its audio, if it has some), one with a string at an ``error_message_keys``
    path is an error, anything else is :class:`~flushsink.Unknown`. ``final_key`` is
    only for such envelopes.

    Frames of ``timestamp_types`` / ``phoneme_timestamp_types`` carry their timestamps
    as Cartesia's do (``word_timestamps`` / ``phoneme_timestamps`` members with
    ``words``/``phonemes``, ``start`` and ``end`` lists). An error's message is the
    first non-empty string at ``error_message_keys``; its code, the value at
    ``error_code_key``. ``context_fallback_key``: where a frame names its context when it
    has nothing (or null) at ``context_key`` (OpenAI's ``response.created`` and
    ``response.done`` carry the response's id at ``response.id``, its deltas at
    ``response_id``). Two paths may not be the same, nor one inside another (``"media"``
    and ``"media.payload"``).
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
    phoneme_timestamp_types: tuple[str, ...] = ()
    error_message_keys: tuple[str, ...] = ()
    error_code_key: Optional[str] = None
    final_key: Optional[str] = None
    context_fallback_key: Optional[str] = None
    audio_encoding: Literal["base64", "hex"] = "base64"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("Envelope.name must be a non-empty str")
        _path("type_key", self.type_key)
        _path("audio_key", self.audio_key, required=True)
        for name in ("context_key", "segment_key", "final_key", "error_code_key",
                     "context_fallback_key"):
            _path(name, getattr(self, name))
        if not isinstance(self.error_message_keys, tuple):
            raise ValueError("Envelope.error_message_keys must be a tuple of paths")
        for key in self.error_message_keys:
            _path("error_message_keys", key)
        seen: dict[str, str] = {}
        for kind in ("audio_types", "segment_end_types", "context_end_types", "error_types",
                     "timestamp_types", "phoneme_timestamp_types"):
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
        else:
            if not self.audio_types:
                raise ValueError("Envelope.audio_types must name at least one type")
            if self.final_key is not None:
                raise ValueError("final_key is for envelopes without type_key; give the "
                                 "type that ends a context in context_end_types")
        if self.audio_encoding not in ("base64", "hex"):
            raise ValueError(f"Envelope.audio_encoding must be 'base64' or 'hex', "
                             f"not {self.audio_encoding!r}")
        paths = [p for p in self.paths() if p is not None]
        for i, a in enumerate(paths):
            for b in paths[i + 1:]:
                if a == b or b.startswith(a + ".") or a.startswith(b + "."):
                    raise ValueError(f"Envelope paths {a!r} and {b!r} overlap")

    def paths(self) -> tuple[Optional[str], ...]:
        """Every path the envelope reads: type, context, segment, audio, final, the
        timestamp members when it has timestamp types, the error code and messages."""
        timestamps = ("word_timestamps" if self.timestamp_types else None,
                      "phoneme_timestamps" if self.phoneme_timestamp_types else None)
        return (self.type_key, self.context_key, self.segment_key, self.audio_key,
                self.final_key, *timestamps, self.error_code_key, *self.error_message_keys,
                self.context_fallback_key)

    def type_kinds(self) -> dict[str, str]:
        """Every type value the envelope knows, with its kind."""
        return {value: kind for kind, field in _KIND_FIELDS.items()
                for value in getattr(self, field)}

    def kind_of(self, type_value: object) -> Optional[str]:
        """What a frame of this type is (one of :data:`KINDS`), or None: a type the
        envelope does not know."""
        for kind, field in _KIND_FIELDS.items():
            if type_value in getattr(self, field):
                return kind
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
    timestamp_types=("timestamps",),
    phoneme_timestamp_types=("phoneme_timestamps",),
    error_message_keys=("error", "message"),  # legacy text, then structured (2026-03-01)
    error_code_key="error_code",
)

ELEVENLABS = Envelope(
    name="elevenlabs",
    type_key=None,
    audio_types=(),
    audio_key="audio",
    context_key="contextId",  # absent on the single stream-input endpoint: one context
    final_key="isFinal",
    error_message_keys=("message",),
    error_code_key="error",
)

OPENAI_REALTIME = Envelope(
    name="openai-realtime",
    type_key="type",
    audio_types=("response.output_audio.delta", "response.audio.delta"),  # GA, beta
    audio_key="delta",
    context_key="response_id",
    context_fallback_key="response.id",  # response.created, response.done
    segment_end_types=("response.output_audio.done", "response.audio.done"),
    context_end_types=("response.done",),
    error_types=("error",),
    error_message_keys=("error.message",),
    error_code_key="error.code",
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
