"""The differential engine shared by the atheris target (fuzz/fuzz_sink.py) and the pytest
smoke run (tests/test_hostile.py): programs of Sink calls, run on the compiled core and on the
pure twin, every result compared.

A *program* is a Sink configuration plus a list of operations:

    ("feed", frame: bytes, as_type)   as_type: bytes | bytearray | memoryview | str |
                                      str_lossy | strided (a non-contiguous view: TypeError)
    ("cancel", context_id)            ("close", reason)
    ("set_format", context_id, format_index)

Each operation runs on three sinks: the compiled one, the pure twin, and a *shadow*
compiled sink that only sees the operations the first accepted (and, for a chunk
rejected by a cap or its base64, the same chunk with empty data: it resolves the segment
the rejected one marked as lost, docs/sink.md "Lost chunks"). After every operation the
three must agree (result, exception type/code/offset/detail/message, stats; the lost mark
taken out for the shadow), which checks both "the cores are twins" and "a rejected frame
changes nothing but that mark" without trusting either core. The only accepted rejections are the documented ones:
FrameError and CapacityError (TypeError only for the non-contiguous view). Anything
else raises Finding.

Two generators make programs from fuzzer bytes:

- ``decode_raw(data)``: a length-prefixed byte format (what libFuzzer mutates blindly);
  ``encode_raw(config, ops)`` writes realistic programs in it for the seed corpus;
- ``generate_structured(provider)``: real frames (the emulator's shapes, the bench's
  chunks) mutated at the JSON level: keys, duplicate keys, escapes in keys and data,
  base64 broken at every position class, nesting around the depth limit, numbers,
  unicode (valid and not), BOM, NaN, truncation, whitespace. ``provider`` is an
  atheris.FuzzedDataProvider or the seeded RandomProvider below.
"""

from __future__ import annotations

import base64
import json
import random
import re
import sys
from typing import Any, Callable, Optional

from flushsink import AudioFormat, CapacityError, FrameError
from flushsink.envelopes import CARTESIA, ELEVENLABS, OPENAI_REALTIME, TWILIO_MEDIA, Envelope
from flushsink import _fallback
from flushsink.segments import (ContextDone, ContextError, SegmentReady, ServerError,
                                Timestamps, Unknown)

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover - the callers check and skip
    _speedups = None

FORMATS = [AudioFormat("pcm_s16le", 44100), AudioFormat("pcm_f32le", 24000),
           AudioFormat("pcm_mulaw", 8000), AudioFormat("pcm_alaw", 16000),
           AudioFormat("pcm_s16le", 8000), AudioFormat("pcm_f32le", 48000)]
# small caps make CapacityError reachable by short inputs; the defaults check the common case
SEGMENT_CAPS = [256 * 2**20, 0, 1, 3, 7, 64, 1000, 4096]
TOTAL_CAPS = [1024 * 2**20, 0, 2, 9, 100, 2000, 8192]
PREALLOC = [10.0, 0.0, 0.0001, 0.5]
ENDED = [10_000, 0, 1, 2, 5]
#: (stream, keep_audio): not streaming, streaming, streaming and keeping nothing
STREAM_MODES = [(False, True), (True, True), (True, False)]
AS_TYPES = ["bytes", "bytearray", "memoryview", "str", "str_lossy", "strided"]
CONTEXT_POOL = ["a", "b", "turn-17", None, "é😀/\"x", "../../etc/passwd", "a" * 300, ""]
#: a user's envelope: every field nested, some deeper than others, hex audio
DEEP_HEX = Envelope(
    name="deep-hex", type_key="meta.kind", audio_types=("audio", "audio2"),
    audio_key="body.audio.hex", context_key="meta.session.id", segment_key="body.part",
    segment_end_types=("part_end",), context_end_types=("end",), error_types=("oops",),
    timestamp_types=("words",), error_message_keys=("problem.text", "detail"),
    error_code_key="problem.code", audio_encoding="hex")
#: what a program's sink reads by (None: Cartesia's own intake)
ENVELOPES: list[Optional[Envelope]] = [None, ELEVENLABS, OPENAI_REALTIME, TWILIO_MEDIA, DEEP_HEX]


class Finding(AssertionError):
    """The cores disagree, an undocumented exception escaped, or an invariant broke."""


# --- configuration ---------------------------------------------------------------------------

def config_from_bytes(raw: bytes) -> dict[str, Any]:
    raw = raw.ljust(4, b"\0")
    return {
        "format": (raw[0] & 0x0F) % len(FORMATS),
        "envelope": (raw[0] >> 4) % len(ENVELOPES),
        "max_segment_bytes": SEGMENT_CAPS[raw[1] % len(SEGMENT_CAPS)],
        "max_total_bytes": TOTAL_CAPS[(raw[1] >> 4) % len(TOTAL_CAPS)],
        "prealloc_seconds": PREALLOC[raw[2] % len(PREALLOC)],
        "stream": STREAM_MODES[(raw[2] >> 4) % len(STREAM_MODES)],
        "max_ended_contexts": ENDED[(raw[3] & 0x7F) % len(ENDED)],
        # what the clients run with: only contexts announced by set_format may store audio
        "drop_unannounced": bool(raw[3] & 0x80),
    }


def config_to_bytes(config: dict[str, Any]) -> bytes:
    return bytes([
        config["format"] | config.get("envelope", 0) << 4,
        SEGMENT_CAPS.index(config["max_segment_bytes"])
        | TOTAL_CAPS.index(config["max_total_bytes"]) << 4,
        PREALLOC.index(config["prealloc_seconds"])
        | STREAM_MODES.index(config.get("stream", STREAM_MODES[0])) << 4,
        ENDED.index(config["max_ended_contexts"]) | (0x80 if config["drop_unannounced"] else 0),
    ])


DEFAULT_CONFIG = config_from_bytes(b"\0\0\0\0")


def make_sink(core: Any, config: dict[str, Any]) -> Any:
    return core.Sink(FORMATS[config["format"]], prealloc_seconds=config["prealloc_seconds"],
                     max_segment_bytes=config["max_segment_bytes"],
                     max_total_bytes=config["max_total_bytes"],
                     max_ended_contexts=config["max_ended_contexts"],
                     drop_unannounced=config["drop_unannounced"],
                     stream=config.get("stream", STREAM_MODES[0])[0],
                     keep_audio=config.get("stream", STREAM_MODES[0])[1],
                     envelope=ENVELOPES[config.get("envelope", 0)])


# --- the raw program format ------------------------------------------------------------------
#
# config (4 bytes), then records: op (1 byte), length (2 bytes LE), payload. A length past the
# end takes what is left, so every byte string is a program.

OP_NAMES = ["feed"] * 6 + ["cancel", "close", "set_format", "big"]
# Inputs are at most a few kB, but the core has paths only large frames take: the GIL is
# released from 16 kB of base64, the SIMD kernels' bulk loops, the buffer pool (segments of
# 64 kB and more are recycled). A "big" op expands 5 bytes into a chunk of up to 255 kB.
BIG_CONTEXTS = ["a", "b", None, "turn-17"]


def decode_raw(data: bytes, max_ops: int = 64) -> tuple[dict[str, Any], list[tuple]]:
    config = config_from_bytes(data[:4])
    ops: list[tuple] = []
    i = 4
    while i < len(data) and len(ops) < max_ops:
        op = data[i] % 16
        length = int.from_bytes(data[i + 1:i + 3], "little")
        payload = data[i + 3:i + 3 + length]
        i += 3 + length
        if op < 6 or op >= len(OP_NAMES):
            ops.append(("feed", payload, AS_TYPES[op % 6] if op < 6 else "bytes"))
        elif OP_NAMES[op] == "cancel":
            ops.append(("cancel", _context_from_payload(payload)))
        elif OP_NAMES[op] == "close":
            ops.append(("close", payload.decode("utf-8", "replace")))
        elif OP_NAMES[op] == "set_format":
            fmt = payload[0] % len(FORMATS) if payload else 0
            ops.append(("set_format", _context_from_payload(payload[1:]), fmt))
        else:
            ops.append(("feed", big_frame(payload), "bytes"))
    return config, ops


def big_frame(spec: bytes) -> bytes:
    """A chunk frame of spec[2] kB (+ spec[3] % 8 bytes) of audio; spec[0] picks the context,
    spec[1] the flush_id (255: none), spec[3] >= 128 and spec[4] break one base64 character
    at an offset scaled over the whole string (bulk loops, block edges, the tail)."""
    spec = spec.ljust(5, b"\0")
    size = spec[2] * 1024 + spec[3] % 8
    audio = random.Random(spec[2] * 256 + spec[3]).randbytes(size)
    text = bytearray(base64.b64encode(audio))
    if spec[3] >= 128 and text:
        text[spec[4] * (len(text) - 1) // 255] = b"*-_=\n A"[spec[3] % 7]
    frame = {"type": "chunk", "context_id": BIG_CONTEXTS[spec[0] % len(BIG_CONTEXTS)]}
    if spec[1] != 255:
        frame["flush_id"] = spec[1] % 4
    head = json.dumps(frame)[:-1].encode()
    return head + b', "data": "' + bytes(text) + b'"}'


def big_op(context: int, flush_id: int, kilobytes: int, extra: int = 0, where: int = 0) -> bytes:
    """The raw-format record of a big chunk (for seed programs)."""
    payload = bytes([context, flush_id, kilobytes, extra, where])
    return bytes([9]) + len(payload).to_bytes(2, "little") + payload


def _context_from_payload(payload: bytes) -> Optional[str]:
    if payload == b"\0":
        return None
    return payload.decode("utf-8", "replace")


def encode_raw(config: dict[str, Any], ops: list[tuple]) -> bytes:
    out = bytearray(config_to_bytes(config))
    for op in ops:
        if op[0] == "feed":
            code, payload = AS_TYPES.index(op[2]), op[1]
        elif op[0] == "cancel":
            code, payload = 6, b"\0" if op[1] is None else op[1].encode()
        elif op[0] == "close":
            code, payload = 7, op[1].encode()
        else:
            code = 8
            payload = bytes([op[2]]) + (b"\0" if op[1] is None else op[1].encode())
        payload = payload[:0xFFFF]
        out += bytes([code]) + len(payload).to_bytes(2, "little") + payload
    return bytes(out)


# --- running a program -------------------------------------------------------------------------

def _as_input(frame: bytes, as_type: str) -> Any:
    if as_type == "bytes":
        return bytes(frame)
    if as_type == "bytearray":
        return bytearray(frame)
    if as_type == "memoryview":
        return memoryview(bytearray(frame))
    if as_type == "str":  # invalid UTF-8 becomes lone surrogates: a FrameError "utf8"
        return frame.decode("utf-8", "surrogateescape")
    if as_type == "str_lossy":
        return frame.decode("utf-8", "replace")
    if as_type == "strided":
        return memoryview(bytes(frame) + b" ")[::2]
    raise ValueError(as_type)


def _norm(value: Any) -> Any:
    """Comparable form: floats by repr (so nan == nan and -0.0 != 0.0), containers deep."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (int, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return ("dict", tuple((k, _norm(v)) for k, v in value.items()))
    raise Finding(f"unexpected value in an event: {value!r}")


def _norm_items(items: Any) -> tuple:
    if not isinstance(items, tuple):
        raise Finding(f"timestamps must be a tuple, not {type(items).__name__}")
    return tuple((t.text, _norm(t.start), _norm(t.end)) for t in items)


def norm_segment(seg: Any) -> tuple:
    fmt = seg.format
    samples = seg.samples
    if samples.dtype != fmt.dtype:
        raise Finding(f"samples dtype {samples.dtype} for {fmt}")
    if not isinstance(seg.trailing_bytes, bytes) or len(seg.trailing_bytes) >= fmt.sample_width:
        raise Finding(f"trailing_bytes {seg.trailing_bytes!r} for width {fmt.sample_width}")
    if not samples.flags.c_contiguous:
        raise Finding("samples are not contiguous")
    if seg.complete != (seg.error is None):
        raise Finding(f"complete={seg.complete} but error={seg.error!r}")
    return (seg.context_id, seg.flush_id, fmt.encoding, fmt.sample_rate, samples.dtype.str,
            samples.tobytes(), seg.trailing_bytes, seg.complete, seg.error, _norm(seg.start),
            _norm_items(seg.word_timestamps), _norm_items(seg.phoneme_timestamps), seg.path,
            seg.sample_count, bool(samples.flags.writeable))


def norm_event(ev: Any) -> tuple:
    if type(ev).__name__ == "AudioChunk":  # (either core's)
        samples, data = ev.samples, ev.data
        if samples.flags.writeable or not data.readonly:
            raise Finding(f"a writable view of {ev!r}")
        if samples.tobytes() != data.tobytes() or len(samples) != len(ev) or not len(ev):
            raise Finding(f"{ev!r}: samples and data differ, or it has no sample")
        return ("chunk", ev.context_id, ev.flush_id, ev.start, samples.dtype.str,
                data.tobytes())
    if isinstance(ev, SegmentReady):
        return ("ready",) + norm_segment(ev.segment)
    if isinstance(ev, ContextDone):
        return ("done", ev.context_id)
    if isinstance(ev, ContextError):
        return ("ctx_error", ev.context_id, ev.message, ev.status_code, ev.error_code, ev.title,
                _norm(ev.raw))
    if isinstance(ev, ServerError):
        return ("server_error", ev.message, ev.status_code, ev.error_code, ev.title, _norm(ev.raw))
    if isinstance(ev, Timestamps):
        return ("timestamps", ev.context_id, ev.flush_id, ev.kind, _norm_items(ev.items),
                _norm(ev.segment_start))
    if isinstance(ev, Unknown):
        return ("unknown", ev.context_id, _norm(ev.type), _norm(ev.message))
    raise Finding(f"not an event: {ev!r}")


def outcome(call: Callable[[], Any], op: tuple) -> tuple:
    try:
        result = call()
    except FrameError as exc:
        return ("FrameError", exc.code, exc.offset, exc.detail, str(exc), exc.args)
    except CapacityError as exc:
        return ("CapacityError", str(exc), exc.context_id, exc.flush_id)
    except TypeError as exc:
        if op[0] == "feed" and op[2] == "strided":
            return ("TypeError", str(exc))
        raise Finding(f"{op[0]} raised an undocumented TypeError: {exc!r}") from exc
    except Exception as exc:
        raise Finding(f"{op[0]} raised an undocumented {type(exc).__name__}: {exc!r}") from exc
    if not isinstance(result, tuple):
        raise Finding(f"{op[0]} returned {type(result).__name__}, not a tuple")
    if op[0] == "feed" and op[2] == "strided":
        raise Finding("a non-contiguous buffer was accepted")
    return ("ok", tuple(norm_event(e) for e in result))


def _apply(sink: Any, op: tuple) -> Callable[[], Any]:
    if op[0] == "feed":
        frame = _as_input(op[1], op[2])
        return lambda: sink.feed(frame)
    if op[0] == "cancel":
        return lambda: sink.cancel(op[1])
    if op[0] == "close":
        return lambda: sink.close(op[1])
    return lambda: (sink.set_format(op[1], FORMATS[op[2]]), ())[1]


def _check_invariants(sink: Any, config: dict[str, Any], op: tuple, result: tuple) -> None:
    stats = sink.stats
    if stats.open_bytes > config["max_total_bytes"] or stats.open_bytes < 0:
        raise Finding(f"open_bytes {stats.open_bytes} outside [0, {config['max_total_bytes']}]")
    if stats.open_segments < 0 or (stats.open_segments == 0 and stats.open_bytes):
        raise Finding(f"open_segments {stats.open_segments} with open_bytes {stats.open_bytes}")
    if op[0] == "close" and (stats.open_segments or stats.open_bytes):
        raise Finding(f"close() left {stats.open_segments} segments / {stats.open_bytes} bytes open")
    keep_audio = config.get("stream", STREAM_MODES[0])[1]  # (else the byte caps do not apply)
    for ev in result[1] if result[0] == "ok" and keep_audio else ():
        if ev[0] == "ready":
            nbytes = len(ev[6]) + len(ev[7])
            if nbytes > config["max_segment_bytes"]:
                raise Finding(f"a segment of {nbytes} bytes passed max_segment_bytes")


def run_program(config: dict[str, Any], ops: list[tuple], *, compiled: Any = None,
                pure: Any = None) -> dict[str, int]:
    """Run ops on both cores and the shadow; raise Finding at the first difference.
    Returns counts of what happened (for the smoke test's sanity checks)."""
    compiled = compiled or _speedups
    pure = pure or _fallback
    main, twin, shadow = (make_sink(compiled, config), make_sink(pure, config),
                          make_sink(compiled, config))
    counts = {"ok": 0, "FrameError": 0, "CapacityError": 0, "TypeError": 0, "segments": 0}
    stand_ins = 0  # empty chunks the shadow accepted in place of rejected ones
    for step, op in enumerate(ops + [("close", "end of program")]):
        got = outcome(_apply(main, op), op)
        want = outcome(_apply(twin, op), op)
        if got != want:
            raise Finding(f"cores differ at op {step} {_short(op)}:\n compiled {_short(got)}\n"
                          f" pure     {_short(want)}")
        stats_c, stats_p = tuple(main.stats), tuple(twin.stats)
        if stats_c != stats_p:
            raise Finding(f"stats differ after op {step} {_short(op)}: {stats_c} != {stats_p}")
        if got[0] == "ok":
            shadowed = outcome(_apply(shadow, op), op)
            if shadowed != _unmark_lost(got):
                raise Finding(f"a rejected frame changed the state: op {step} {_short(op)}:\n"
                              f" with rejections    {_short(got)}\n"
                              f" without rejections {_short(shadowed)}")
            counts["segments"] += sum(1 for e in got[1] if e[0] == "ready")
        elif _loses_a_chunk(got):
            # docs/sink.md "Lost chunks": the one mark a rejected chunk leaves is on the
            # segment it was meant for; the same chunk without data resolves that segment
            stand_in = _without_audio(op, ENVELOPES[config.get("envelope", 0)])
            if outcome(_apply(shadow, stand_in), op)[0] == "ok":
                stand_ins += 1
        stats_s = tuple(shadow.stats)
        if (stats_c[0] + stand_ins, stats_c[1] + stand_ins) + stats_c[2:4] + stats_c[5:] \
                != stats_s[:4] + stats_s[5:]:
            raise Finding(f"a rejected frame changed the stats: {stats_c} vs {stats_s} "
                          f"({stand_ins} empty chunks stood in for rejected ones)")
        _check_invariants(main, config, op, got)
        counts[got[0]] += 1
    return counts


_LOST_MARK = re.compile(r"(?:^|; )lost \d+ chunks? \(\d+ bytes\)(?:, the first)?: [^;]*$")


def _loses_a_chunk(result: tuple) -> bool:
    """A rejection that marks a segment: a cap, or a chunk's base64 (or hex)."""
    return result[0] == "CapacityError" or (result[0] == "FrameError"
                                            and result[1].startswith(("base64", "hex")))


def _without_audio(op: tuple, envelope: Optional[Envelope] = None) -> tuple:
    """The feed op of the same (valid JSON) chunk frame with empty data (and, read by an
    envelope without types, without the final flag: the rejected frame ended nothing)."""
    frame = _as_input(op[1], op[2])
    obj = json.loads(frame.encode("utf-8") if isinstance(frame, str) else bytes(frame),
                     parse_float=str, parse_constant=str)  # (only the keys below matter)
    if envelope is None:
        kept = {key: obj[key] for key in ("type", "context_id", "flush_id") if key in obj}
        return ("feed", json.dumps({**kept, "data": ""}).encode(), "bytes")
    kept = {}
    for path in (envelope.type_key, envelope.context_key, envelope.segment_key):
        if path is not None and _at(obj, path) is not _MISSING:
            _put(kept, path, _at(obj, path))
    _put(kept, envelope.audio_key, "")
    return ("feed", json.dumps(kept).encode(), "bytes")


_MISSING = object()


def _at(obj: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(obj, dict) or name not in obj:
            return _MISSING
        obj = obj[name]
    return obj


def _put(obj: dict, path: str, value: Any) -> None:
    *outer, last = path.split(".")
    for name in outer:
        obj = obj.setdefault(name, {})
    obj[last] = value


def translate(obj: dict, envelope: Optional[Envelope]) -> dict:
    """A Cartesia-shaped frame as the envelope's provider would send it: the type of the
    same kind (a type-less envelope: the fields that make it that kind), the context,
    label and audio at the envelope's paths (hex audio re-encoded), the rest as it is."""
    if envelope is None:
        return obj
    out: dict = {}
    kinds = {"chunk": "audio", "flush_done": "segment_end", "done": "context_end",
             "error": "error", "timestamps": "timestamps",
             "phoneme_timestamps": "phoneme_timestamps"}
    rest = dict(obj)
    ftype = rest.pop("type", _MISSING)
    kind = kinds.get(ftype) if isinstance(ftype, str) else None
    if envelope.type_key is not None and ftype is not _MISSING:
        values = [v for v, k in envelope.type_kinds().items() if k == kind]
        _put(out, envelope.type_key, values[0] if values else ftype)
    elif envelope.type_key is None and kind == "context_end":
        _put(out, envelope.final_key, True)
    cid = rest.pop("context_id", _MISSING)
    if envelope.context_key is not None and cid is not _MISSING:
        _put(out, envelope.context_key, cid)
    fid = rest.pop("flush_id", _MISSING)
    if envelope.segment_key is not None and fid is not _MISSING:
        _put(out, envelope.segment_key, fid)
    data = rest.pop("data", _MISSING)
    if data is not _MISSING and (kind == "audio" or envelope.type_key is not None):
        if envelope.audio_encoding == "hex" and isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True).hex()
            except ValueError:
                pass
        _put(out, envelope.audio_key, data)
    if kind == "error":
        message = rest.pop("message", rest.pop("error", None))
        for path in envelope.error_message_keys[:1]:
            _put(out, path, message)
    for key, value in rest.items():
        if key not in out and all(p is None or p.split(".")[0] != key for p in envelope.paths()):
            out[key] = value
    return out


def _unmark_lost(result: tuple) -> tuple:
    """A result's events with the lost marks taken out of the segments' errors."""
    events = []
    for ev in result[1]:
        mark = _LOST_MARK.search(ev[9]) if ev[0] == "ready" and isinstance(ev[9], str) else None
        if mark:  # "lost ..." alone, or after the segment's own error and "; "
            error = ev[9][:mark.start()] if mark.group(0).startswith("; ") else None
            ev = ev[:8] + (error is None, error) + ev[10:]
        events.append(ev)
    return (result[0], tuple(events))


def _short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# --- realistic frames (the emulator's shapes) --------------------------------------------------

def pcm(rng_bytes: bytes) -> str:
    return base64.b64encode(rng_bytes).decode("ascii")


def chunk_obj(context_id: Any, flush_id: Any, audio: bytes, *, with_flush: bool = True) -> dict:
    frame = {"type": "chunk", "context_id": context_id, "status_code": 206, "done": False,
             "step_time": 41.7}
    if with_flush:
        frame["flush_id"] = flush_id
    frame["data"] = pcm(audio)
    return frame


def flush_done_obj(context_id: Any, flush_id: Any) -> dict:
    return {"type": "flush_done", "context_id": context_id, "status_code": 206, "done": False,
            "data": "", "flush_id": flush_id, "flush_done": True}


def done_obj(context_id: Any) -> dict:
    return {"type": "done", "context_id": context_id, "status_code": 206, "done": True}


def error_obj(context_id: Any, structured: bool) -> dict:
    if structured:
        frame = {"type": "error", "done": True, "status_code": 400, "error_code": "bad_request",
                 "title": "Invalid request", "message": "transcript must not be empty",
                 "request_id": "r:1"}
    else:
        frame = {"type": "error", "status_code": 400, "done": True,
                 "error": "transcript must not be empty"}
    if context_id is not None:
        frame["context_id"] = context_id
    return frame


def timestamps_obj(context_id: Any, flush_id: Any, phonemes: bool = False) -> dict:
    kind, key, label = (("phoneme_timestamps", "phoneme_timestamps", "phonemes") if phonemes
                        else ("timestamps", "word_timestamps", "words"))
    frame = {"type": kind, "context_id": context_id, "status_code": 206, "done": False}
    if flush_id is not None:
        frame["flush_id"] = flush_id
    frame[key] = {label: ["Stay", "hungry"], "start": [0.0, 0.25], "end": [0.2, 0.61]}
    return frame


def seed_objects(rng: random.Random) -> list[dict]:
    """One of each frame shape, with small audio of awkward lengths."""
    audio = rng.randbytes(rng.choice([0, 1, 2, 3, 5, 8, 47, 64, 300]))
    cid = rng.choice(["a", "b", "turn-17"])
    fid = rng.choice([0, 1, 2])
    return [chunk_obj(cid, fid, audio), chunk_obj(cid, fid, audio, with_flush=False),
            flush_done_obj(cid, fid), done_obj(cid), error_obj(cid, False), error_obj(cid, True),
            error_obj(None, True), timestamps_obj(cid, fid), timestamps_obj(cid, None, True),
            {"type": "voice_changed", "context_id": cid, "x": [1, {"y": None}]}]


def big_seed_inputs() -> list[bytes]:
    """Raw inputs with big chunks: segments through the buffer pool (no reservation, so a
    recycled buffer fits), across the GIL-release threshold, broken in the bulk loop."""
    flush_done_a = lambda fid: encode_raw(DEFAULT_CONFIG, [  # noqa: E731
        ("feed", dumps(flush_done_obj("a", fid)), "bytes")])[4:]
    pool = config_to_bytes(dict(DEFAULT_CONFIG, prealloc_seconds=0.0))
    return [
        pool + big_op(0, 1, 70) + big_op(0, 1, 30, 3) + flush_done_a(1) + big_op(0, 2, 90)
        + flush_done_a(2) + big_op(0, 3, 64, 1),
        pool + big_op(0, 1, 20) + big_op(1, 255, 17, 5) + big_op(0, 1, 40, 130, 128),
        config_to_bytes(DEFAULT_CONFIG) + big_op(3, 0, 255) + big_op(3, 0, 12, 200, 255),
        config_to_bytes(dict(DEFAULT_CONFIG, max_total_bytes=100)) + big_op(2, 1, 1, 3),
    ]


def seed_programs() -> list[tuple[dict[str, Any], list[tuple]]]:
    """Realistic sessions for the raw seed corpus: the bench's segment, the emulator's
    frames and audio (flush ids from 0 and 1, with and without flush_id on chunks, odd
    chunk sizes, timestamps), interleaved contexts, errors, cancels, a drop (close)."""
    from flushsink._bench import segment_frames
    from flushsink.emulator import Emulator, render
    rng = random.Random(1)
    programs = []
    frames, _ = segment_frames(0.2, 20, 8000, "bench")
    programs.append((DEFAULT_CONFIG, [("feed", f, "bytes") for f in frames]))
    fmt = FORMATS[1]  # f32le: 4-byte samples, so odd chunks split them
    for base in (0, 1):
        for with_flush in (True, False):
            step = Emulator(chunk_ms=10, odd_chunks=with_flush).chunk_bytes(fmt)
            ops = []
            for seg, text in enumerate(["Stay hungry, ", "stay foolish."]):
                audio = render(text, "voice", fmt)[:3 * step]
                for k in range(0, len(audio), step):
                    ops.append(("feed", dumps(chunk_obj("ctx", base + seg, audio[k:k + step],
                                                        with_flush=with_flush)), "bytes"))
                ops.append(("feed", dumps(timestamps_obj("ctx", base + seg if with_flush
                                                         else None)), "bytes"))
                ops.append(("feed", dumps(flush_done_obj("ctx", base + seg)), "bytes"))
            ops.append(("feed", dumps(done_obj("ctx")), "bytes"))
            programs.append((config_from_bytes(bytes([1, 0, 0, 0])), ops))
    ops = []
    for k in range(4):
        for cid in ("a", "b", None):
            ops.append(("feed", dumps(chunk_obj(cid, 1, rng.randbytes(7))), "memoryview"))
    ops += [("feed", dumps(error_obj("a", True)), "str"), ("cancel", "b"),
            ("feed", dumps(chunk_obj("b", 1, b"xy")), "bytearray"),
            ("set_format", "c", 1), ("feed", dumps(chunk_obj("c", 5, rng.randbytes(9))), "bytes"),
            ("close", "connection lost")]
    programs.append((config_from_bytes(b"\x02\x33\x01\x01"), ops))
    ops = [("feed", dumps(chunk_obj(f"flood-{k}", 0, rng.randbytes(3))), "bytes")
           for k in range(20)]
    programs.append((config_from_bytes(b"\x00\x45\x00\x02"), ops))
    # each envelope's frames: two contexts, their segments, an error, a timestamps frame
    for index in range(1, len(ENVELOPES)):
        ops = [("feed", dumps(translate(obj, ENVELOPES[index])), "bytes")
               for _ in range(3) for obj in seed_objects(rng)]
        programs.append((dict(config_from_bytes(bytes([1, 0, 0, 0])), envelope=index), ops))
    return programs


# --- a JSON writer with choices ---------------------------------------------------------------

WHITESPACE = [b"", b" ", b"\n", b"\t", b"\r\n  "]
MUST_ESCAPE = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')
BAD_WHITESPACE = [b"\x0b", b"\x0c", b"\xc2\xa0", b"\xef\xbb\xbf", b"\x00"]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class Writer:
    """Serialises a value as JSON text, with escapes, whitespace and literal bytes chosen
    by the provider. Strings may be given as bytes (written as they are: raw, possibly
    invalid, content between the quotes)."""

    def __init__(self, provider: Any, escape_rate: int) -> None:
        self.p = provider
        self.escape_rate = escape_rate  # out of 16

    def ws(self) -> bytes:
        if self.p.ConsumeIntInRange(0, 7) < 6:
            return b""
        return WHITESPACE[self.p.ConsumeIntInRange(0, len(WHITESPACE) - 1)]

    def string(self, text: Any) -> bytes:
        if isinstance(text, bytes):
            return b'"' + text + b'"'
        n = len(text)
        if self.escape_rate == 0 or n == 0:
            picks: list[int] = []
        elif n <= 64:
            picks = [i for i in range(n) if self.p.ConsumeIntInRange(0, 15) < self.escape_rate]
        else:  # long strings (data): a few escapes anywhere, the rest written in one piece
            picks = sorted({self.p.ConsumeIntInRange(0, n - 1) for _ in range(self.escape_rate)})
        out = bytearray(b'"')
        last = 0
        for i in picks + [n]:
            out += self.plain(text[last:i])
            if i < n:
                out += self.escape(text[i])
            last = i + 1
        return bytes(out + b'"')

    def plain(self, text: str) -> bytes:
        if not MUST_ESCAPE.search(text):
            return text.encode("utf-8")
        return b"".join(self.escape(ch) if MUST_ESCAPE.match(ch) else ch.encode("utf-8")
                        for ch in text)

    def escape(self, ch: str) -> bytes:
        code = ord(ch)
        if ch == "/" and self.p.ConsumeBool():
            return b"\\/"
        short = {'"': b'\\"', "\\": b"\\\\", "\b": b"\\b", "\f": b"\\f", "\n": b"\\n",
                 "\r": b"\\r", "\t": b"\\t"}
        if ch in short and self.p.ConsumeBool():
            return short[ch]
        upper = self.p.ConsumeBool()
        if code > 0xFFFF:
            code -= 0x10000
            units = [0xD800 | code >> 10, 0xDC00 | code & 0x3FF]
        else:
            units = [code]
        return b"".join((b"\\u%04X" if upper else b"\\u%04x") % u for u in units)

    def value(self, value: Any) -> bytes:
        if isinstance(value, Raw):
            return value.text
        if isinstance(value, (str, bytes)):
            return self.string(value)
        if isinstance(value, dict) or isinstance(value, Obj):
            items = value.items if isinstance(value, Obj) else list(value.items())
            if not items:
                return b"{" + self.ws() + b"}"
            parts = [self.ws() + self.string(k) + self.ws() + b":" + self.ws() + self.value(v)
                     + self.ws() for k, v in items]
            return b"{" + b",".join(parts) + b"}"
        if isinstance(value, list):
            if not value:
                return b"[" + self.ws() + b"]"
            return b"[" + b",".join(self.ws() + self.value(v) + self.ws() for v in value) + b"]"
        return json.dumps(value).encode("ascii")


class Raw:
    """JSON text written as it is (a number spelling, a bad literal, deep nesting)."""

    def __init__(self, text: bytes) -> None:
        self.text = text


class Obj:
    """An object as a list of items, so keys can repeat and keep their order."""

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items


# --- structure-aware mutations ----------------------------------------------------------------

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
NOT_B64 = ["-", "_", " ", "\n", "\t", "*", ".", "é", "\u2028", "😀", "\x00", "\x7f", "!", "%"]
KEY_VARIANTS = [b"Type", b"type ", b" type", b"typ", b"TYPE", b"data\\u0000", b"dat\\u0061",
                b"t\\u0079pe", b"context\\u005fid", b"flush\\u005Fid", b"\\u0064ata",
                b"word_timestamps", b"phoneme_timestamps", b"", b"\\ud83d\\ude00",
                b"\xff", b"\xc3\xa9", b"flush_id\\u0000"]
FLUSH_IDS = [b"0", b"1", b"2", b"-0", b"00", b"01", b"1.0", b"1e2", b"1E0", b"-1",
             b"4611686018427387904", b"4611686018427387905", b"9223372036854775807",
             b"9223372036854775808", b"18446744073709551616", b"99999999999999999999",
             b"1e400", b"-", b"1.", b"1e", b"1e+", b".5", b"+1", b"0x1", b"NaN", b"Infinity",
             b"-Infinity", b"null", b"true", b'"1"', b"[1]", b"{}", b"1 2"]
LITERALS = [b"NaN", b"Infinity", b"-Infinity", b"nul", b"True", b"nulll", b"tru", b"fals",
            b"undefined", b"'a'", b"\"\\x41\"", b"\"\\u12G4\"", b"\"\\ud800\"",
            b"\"\\udc00\\ud800\"", b"\"\\ud800\\u0041\"", b"\"\\ud800\\udc00\"", b"\"\\",
            b"\"\xed\xa0\x80\"", b"\"\xc0\x80\"", b"\"\xf5\x80\x80\x80\"", b"\"\xe2\x82\"",
            b"\"\xf0\x9f\x98\"", b"\"\x01\"", b"\"\x1f\"", b"\"\x7f\"", b"-0.0e-0", b"1e-400",
            b"123456789012345678901234567890", b"[]", b"{}", b"[[[]]]", b"{\"a\":[{}]}"]
INTERESTING_BYTES = [b'"', b"\\", b"{", b"}", b"[", b"]", b":", b",", b" ", b"\x00", b"\x1f",
                     b"\x7f", b"\x80", b"\xc3", b"\xed", b"\xf4", b"\xff", b"=", b"A", b"\\u",
                     b"\\ud800", b"e", b"-", b".", b"0"]


def _pick(p: Any, seq: list) -> Any:
    return seq[p.ConsumeIntInRange(0, len(seq) - 1)]


def mutate_base64(p: Any, text: str) -> Any:
    """Break (or keep) a base64 string at one of the position classes."""
    n = len(text)
    body = text.rstrip("=")
    cls = p.ConsumeIntInRange(0, 15)
    bad = _pick(p, NOT_B64)
    if cls == 0 or n == 0:  # keep it
        return text
    if cls == 1:  # first character
        return bad + text[1:]
    if cls == 2:  # somewhere in the middle (any offset, crosses SIMD block edges)
        k = p.ConsumeIntInRange(0, n - 1)
        return text[:k] + bad + text[k + 1:]
    if cls == 3:  # each position of the last quantum
        k = max(0, n - 4 + p.ConsumeIntInRange(0, 3))
        return text[:k] + bad + text[k + 1:]
    if cls == 4:  # a '=' inside the body
        k = p.ConsumeIntInRange(0, n - 1)
        return text[:k] + "=" + text[k + 1:]
    if cls == 5:  # a third '=' / padding where none belongs
        return body + "=" * p.ConsumeIntInRange(1, 4)
    if cls == 6:  # alphabet bytes after the padding
        return text + _pick(p, list(B64_ALPHABET)) * p.ConsumeIntInRange(1, 4)
    if cls == 7:  # length not a multiple of 4
        return text[:-p.ConsumeIntInRange(1, 3)] if n > 3 else text + "A"
    if cls == 8:  # extra characters at the end
        return text + "A" * p.ConsumeIntInRange(1, 3)
    if cls == 9:  # whitespace / newline inside (MIME style), as an escape
        k = p.ConsumeIntInRange(0, n)
        return text[:k] + _pick(p, ["\n", "\r\n", " ", "\t"]) + text[k:]
    if cls == 10:  # url-safe alphabet
        return text.replace("+", "-").replace("/", "_") or "-___"
    if cls == 11:  # the same bytes as a longer payload crossing SIMD block sizes
        return text * p.ConsumeIntInRange(2, 12 if n < 4096 else 2)
    if cls == 12:  # non-zero bits in the last character before padding (accepted)
        if text.endswith("==") and n >= 4:
            return text[:-3] + _pick(p, list("BCDEFGHIJKLMNOP")) + "=="
        if text.endswith("=") and n >= 4:
            return text[:-2] + _pick(p, list("BCDEFGH")) + "="
        return text
    if cls == 13:  # raw bytes (maybe invalid UTF-8) right in the data
        k = p.ConsumeIntInRange(0, n)
        return text[:k].encode() + _pick(p, INTERESTING_BYTES) + text[k:].encode()
    if cls == 14:  # padding in the middle of a long payload
        k = p.ConsumeIntInRange(0, max(0, n // 4 - 1)) * 4
        return text[:k] + "AA==" + text[k:]
    return ""  # empty data


def deep(p: Any, depth: int) -> Raw:
    opener = _pick(p, [b"[", b'{"k":'])
    closer = b"]" if opener == b"[" else b"}"
    return Raw(opener * depth + b"1" + closer * depth)


def mutate_object(p: Any, obj: dict, contexts: list, flush_ids: list) -> Obj:
    items: list[tuple[Any, Any]] = list(obj.items())
    for _ in range(p.ConsumeIntInRange(0, 3)):
        if not items:
            break
        kind = p.ConsumeIntInRange(0, 13)
        k = p.ConsumeIntInRange(0, len(items) - 1)
        key, value = items[k]
        if kind == 0:  # rename a key
            items[k] = (_pick(p, KEY_VARIANTS), value)
        elif kind == 1:  # duplicate a key (same or different value)
            items.insert(p.ConsumeIntInRange(0, len(items)),
                         (key, value if p.ConsumeBool() else _pick(p, [None, 1, "x", []])))
        elif kind == 2:  # drop a key
            del items[k]
        elif kind == 3:  # another type
            items[k] = (key, _pick(p, [None, 0, 1.5, True, False, [], {}, "", "chunk",
                                       [1, "a"], {"a": {"b": []}}, -1, 2**70]))
        elif kind == 4:  # nesting around the limit, as the value or as an extra key
            d = _pick(p, [1, 2, 62, 63, 64, 65, 100])
            if p.ConsumeBool():
                items[k] = (key, deep(p, d))
            else:
                items.insert(k, ("nested", deep(p, d)))
        elif kind == 5:  # flush_id spellings
            items.append(("flush_id", Raw(_pick(p, FLUSH_IDS)))) if p.ConsumeBool() \
                else items.__setitem__(k, ("flush_id", Raw(_pick(p, FLUSH_IDS))))
        elif kind == 6:  # a bad literal or odd string anywhere
            items[k] = (key, Raw(_pick(p, LITERALS)))
        elif kind == 7:  # context ids: unicode, escapes, pool
            items[k] = ("context_id", _pick(p, contexts + [
                "é", "😀", "a/b", "a\\b", "\u2028", "\x00x", "con", "NUL.txt", ".partial",
                b"\xff", b"\xed\xa0\x80", b"a\\u0000b", b"\\ud83d\\ude00", b"\\u00e9"]))
        elif kind == 8:  # a different type value
            items[k] = ("type", _pick(p, ["chunk", "flush_done", "done", "error", "timestamps",
                                          "phoneme_timestamps", "Chunk", "", "x",
                                          b"ch\\u0075nk", b"\\u0064one", None, 5]))
        elif kind == 9:  # unknown keys with content to skip
            items.insert(k, (_pick(p, ["extra", "status_code", "done", "x" * 40]),
                             _pick(p, [{"a": [1, 2, {"b": "\\\""}]}, "\\u0000 \" \\", [], 1e308])))
        elif kind == 10:  # timestamps payload shapes
            items[k] = (_pick(p, ["word_timestamps", "phoneme_timestamps"]), _pick(p, [
                {"words": ["a"], "start": [0], "end": [1]},
                {"words": ["a", "b"], "start": [0], "end": [1]},
                {"phonemes": ["a"], "start": [0.5], "end": [True]},
                {"words": [1], "start": [0], "end": [1]},
                {"words": [], "start": [], "end": []},
                {"words": ["a"], "start": [Raw(b"1e400")], "end": [Raw(b"-0.0")]},
                None, [], "x"]))
        elif kind == 11:  # flush_id from the program's pool (sequence interactions)
            items[k] = ("flush_id", _pick(p, flush_ids))
        elif kind == 12:  # move a key
            items.insert(p.ConsumeIntInRange(0, len(items) - 1), items.pop(k))
        else:  # error shapes
            items[k] = (_pick(p, ["error", "message", "title", "error_code", "status_code"]),
                        _pick(p, ["", "boom", 500, None, ["x"], {"a": 1}]))
    data_at = [i for i, (key, v) in enumerate(items) if key == "data" and isinstance(v, str)]
    if data_at and p.ConsumeBool():
        i = data_at[0]
        items[i] = ("data", mutate_base64(p, items[i][1]))
    return Obj(items)


def frame_bytes_mutations(p: Any, frame: bytes) -> bytes:
    kind = p.ConsumeIntInRange(0, 31)
    if kind >= 8 or not frame:
        return frame
    if kind == 0:  # BOM
        return b"\xef\xbb\xbf" + frame
    if kind == 1:  # truncation
        return frame[:p.ConsumeIntInRange(0, len(frame) - 1)]
    if kind == 2:  # trailing bytes
        return frame + _pick(p, [b"x", b" {}", b"\x00", b"\n\n", b",", b"}"])
    if kind == 3:  # replace a byte
        k = p.ConsumeIntInRange(0, len(frame) - 1)
        return frame[:k] + _pick(p, INTERESTING_BYTES) + frame[k + 1:]
    if kind == 4:  # insert bytes
        k = p.ConsumeIntInRange(0, len(frame))
        return frame[:k] + _pick(p, INTERESTING_BYTES + BAD_WHITESPACE) + frame[k:]
    if kind == 5:  # delete a byte
        k = p.ConsumeIntInRange(0, len(frame) - 1)
        return frame[:k] + frame[k + 1:]
    if kind == 6:  # a non-object frame
        return _pick(p, [b"[]", b'"chunk"', b"null", b"1", b"", b"   ", b"\xef\xbb\xbf{}"])
    return bytes(p.ConsumeBytes(p.ConsumeIntInRange(0, 64)))  # whatever the fuzzer has


def generate_structured(p: Any, max_ops: int = 24) -> tuple[dict[str, Any], list[tuple]]:
    config = config_from_bytes(bytes(p.ConsumeIntInRange(0, 255) for _ in range(4)))
    rng = random.Random(p.ConsumeIntInRange(0, 2**16))
    contexts = [_pick(p, CONTEXT_POOL) for _ in range(3)]
    flush_ids = [p.ConsumeIntInRange(0, 3), p.ConsumeIntInRange(0, 3),
                 _pick(p, [0, 1, 2**62, 2**62 - 1, 10**18])]
    ops: list[tuple] = []
    if config["drop_unannounced"]:  # as a client would: two of the contexts are its own
        ops += [("set_format", cid, config["format"]) for cid in contexts[:2]]
    for _ in range(p.ConsumeIntInRange(1, max_ops)):
        what = p.ConsumeIntInRange(0, 31)
        if what == 0:
            ops.append(("cancel", _pick(p, contexts)))
            continue
        if what == 1:
            ops.append(("close", _pick(p, ["closed", "connection lost", ""])))
            continue
        if what == 2:
            ops.append(("set_format", _pick(p, contexts), p.ConsumeIntInRange(0, len(FORMATS) - 1)))
            continue
        cid, fid = _pick(p, contexts), _pick(p, flush_ids)
        audio = rng.randbytes(_pick(p, [0, 1, 2, 3, 4, 5, 7, 8, 31, 47, 48, 64, 96, 97, 190,
                                         191, 192, 200, 1000, 12_289, 65_536, 70_001]))
        shapes = [chunk_obj(cid, fid, audio), chunk_obj(cid, fid, audio, with_flush=False),
                  flush_done_obj(cid, fid), done_obj(cid), error_obj(cid, p.ConsumeBool()),
                  error_obj(None, p.ConsumeBool()), timestamps_obj(cid, fid),
                  timestamps_obj(cid, None, True), {"type": "voice_changed", "context_id": cid},
                  {"context_id": cid, "data": pcm(audio)}]
        weights = [8, 3, 4, 2, 1, 1, 1, 1, 1, 1]
        choice = p.ConsumeIntInRange(0, sum(weights) - 1)
        for index, w in enumerate(weights):
            if choice < w:
                break
            choice -= w
        obj = shapes[index]
        if index < 2:  # the server's timing changes every chunk: the scanner's template
            obj["step_time"] = round(rng.uniform(0, 200), rng.randint(0, 7))  # sees a new number
        obj = translate(obj, ENVELOPES[config["envelope"]])
        if p.ConsumeIntInRange(0, 3) == 0:
            obj = mutate_object(p, obj, contexts, flush_ids)
        escape_rate = _pick(p, [0, 0, 0, 1, 4, 16])
        frame = Writer(p, escape_rate).value(obj)
        if p.ConsumeIntInRange(0, 7) == 0:
            frame = frame_bytes_mutations(p, frame)
        ops.append(("feed", frame, AS_TYPES[_pick(p, [0, 0, 0, 1, 2, 3, 4, 5])]))
    return config, ops


class RandomProvider:
    """The subset of atheris.FuzzedDataProvider the generator uses, from a seeded PRNG
    (for the deterministic smoke run in the test suite)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def ConsumeIntInRange(self, low: int, high: int) -> int:  # noqa: N802 - atheris' names
        return self.rng.randint(low, high)

    def ConsumeBool(self) -> bool:  # noqa: N802
        return self.rng.random() < 0.5

    def ConsumeBytes(self, n: int) -> bytes:  # noqa: N802
        return self.rng.randbytes(n)


def mutate_raw(rng: random.Random, data: bytes) -> bytes:
    """A few libFuzzer-like byte mutations, for the smoke run over the raw format."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(buf) <= 4:
            buf += rng.randbytes(8)
        k = rng.randrange(4, len(buf))
        kind = rng.randrange(6)
        if kind == 0:
            buf[k] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[k:k] = rng.choice(INTERESTING_BYTES)
        elif kind == 2:
            del buf[k:k + rng.randint(1, 4)]
        elif kind == 3:
            buf[k] = rng.randrange(256)
        elif kind == 4:
            buf[rng.randrange(4)] = rng.randrange(256)  # another configuration
        else:
            j = rng.randrange(4, len(buf))
            buf[k:k] = buf[j:j + rng.randint(1, 16)]
    return bytes(buf)


def main(argv: list[str]) -> int:
    """Replay fuzzer inputs (crash files, corpus entries) without atheris: print each
    program as Python literals, ready for a regression test, and run it."""
    if len(argv) < 2 or argv[0] not in ("raw", "structured"):
        print("usage: python tests/helpers/differential.py raw|structured FILE...", file=sys.stderr)
        return 2
    failed = 0
    for name in argv[1:]:
        with open(name, "rb") as f:
            data = f.read()
        if argv[0] == "raw":
            config, ops = decode_raw(data)
        else:
            import atheris  # the structured generator reads atheris' provider
            config, ops = generate_structured(atheris.FuzzedDataProvider(data))
        print(f"# {name}\nconfig = {config!r}\nops = [")
        for op in ops:
            print(f"    {op!r},")
        print("]")
        try:
            print("# ->", run_program(config, ops))
        except Finding as exc:
            failed += 1
            print(f"# FINDING: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
