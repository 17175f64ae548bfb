"""The emulator's speech: synthetic, speech-like audio that is a pure function of (text,
voice, format, speed), so a test can predict every byte the emulator sends.

This is the tests' oracle. It needs numpy and flushsink's formats, never websockets: the
server streams what :func:`layout` and :func:`synthesize` make here, and a test checks it
against :func:`render`, which is the same two steps.

Each word is a harmonic tone burst whose pitch, glide and length come from CRC-32 of the
voice and the word (stable across processes, unlike hash()); whitespace separates words
and punctuation at the end of a word lengthens the pause after it. Boundaries are whole
samples, so timestamps and audio agree exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..formats import AudioFormat, encode_samples

__all__ = ["render", "render_samples", "render_timestamps", "render_phoneme_timestamps"]

_WORD_GAP_S = 0.05
_PUNCTUATION_PAUSE_S = {",": 0.15, ";": 0.2, ":": 0.2, "-": 0.1, ".": 0.35, "!": 0.35, "?": 0.35}
_AMPLITUDE = 0.3  # leaves headroom: samples never reach full scale
_RAMP_S = 0.012  # raised-cosine attack and release: no clicks at word edges


class Word(NamedTuple):
    """One word of a segment, placed on the sample grid by :func:`layout`."""

    text: str
    start: int  # first sample, from the start of the segment
    length: int  # samples
    f0: float  # pitch at the start of the word, Hz
    f1: float  # pitch at the end
    syllables: int


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _unit(value: int, shift: int) -> float:
    """Ten bits of a hash as a float in [0, 1]."""
    return ((value >> shift) & 0x3FF) / 0x3FF


def _pause_seconds(token: str) -> float:
    trailing = token[len(token.rstrip("".join(_PUNCTUATION_PAUSE_S))) :]
    return max([_WORD_GAP_S] + [_PUNCTUATION_PAUSE_S[mark] for mark in trailing])


def layout(transcript: str, voice_id: str, sample_rate: int, speed: float) -> tuple[list[Word], int]:
    """Place the words of one segment on the sample grid; returns (words, total samples)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, not {sample_rate!r}")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, not {speed!r}")
    voice_hash = _crc("voice\0" + voice_id)
    base_pitch = 95.0 + 130.0 * _unit(voice_hash, 0)
    tempo = (0.85 + 0.3 * _unit(voice_hash, 10)) / speed
    words: list[Word] = []
    cursor = 0
    for token in transcript.split():
        letters = sum(ch.isalnum() for ch in token)
        if letters:  # a token of punctuation only is a pause, not a word
            word_hash = _crc(voice_id + "\0" + token)
            length = max(1, round((0.09 + 0.055 * letters) * tempo * sample_rate))
            f0 = base_pitch * (0.85 + 0.35 * _unit(word_hash, 0))
            f1 = f0 * (0.88 + 0.2 * _unit(word_hash, 10))
            words.append(Word(token, cursor, length, f0, f1, max(1, round(letters / 3))))
            cursor += length
        cursor += round(_pause_seconds(token) * tempo * sample_rate)
    return (words, cursor) if words else ([], 0)  # nothing to say: no audio, not a pause


def synthesize(words: Sequence[Word], total: int, sample_rate: int) -> np.ndarray:
    """The float64 samples of a segment ``total`` samples long holding ``words``."""
    out = np.zeros(total, dtype=np.float64)
    for word in words:
        n = word.length
        t = np.arange(n, dtype=np.float64) / sample_rate
        duration = n / sample_rate
        # A linear glide from f0 to f1: the phase is the integral of the frequency.
        phase = 2.0 * np.pi * (word.f0 * t + (word.f1 - word.f0) * t * t / (2.0 * duration))
        tone = (np.sin(phase) + 0.45 * np.sin(2.0 * phase) + 0.2 * np.sin(3.0 * phase)) / 1.65
        # One loudness swell per syllable, so long words do not sound like a flat beep.
        envelope = 0.55 + 0.45 * np.sin(np.pi * ((t * (word.syllables / duration)) % 1.0))
        ramp = min(n // 2, round(_RAMP_S * sample_rate))
        if ramp:
            fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
            envelope[:ramp] *= fade
            envelope[n - ramp :] *= fade[::-1]
        out[word.start : word.start + n] = _AMPLITUDE * tone * envelope
    return out


def render_samples(transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0) -> np.ndarray:
    """The float64 samples (in [-0.3, 0.3]) of one segment's text; see :func:`render`."""
    return synthesize(*layout(transcript, voice_id, sample_rate, speed), sample_rate)


def render(transcript: str, voice_id: str, format: AudioFormat, *, speed: float = 1.0) -> bytes:
    """The exact audio the emulator streams for one segment whose text is ``transcript``.

    A pure function of its arguments: the same call gives the same bytes in every process
    (with the same numpy). Words are whitespace-separated tokens; a word is a tone burst
    whose pitch and length derive from the word and ``voice_id``, followed by a pause
    (longer after ``,;:`` and longer still after ``.!?``). ``speed`` divides every
    duration. Text without a letter or digit renders to ``b""``.

    Raises ValueError for a non-positive speed.
    """
    return encode_samples(render_samples(transcript, voice_id, format.sample_rate, speed=speed), format)


def render_timestamps(
    transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0
) -> list[tuple[str, float, float]]:
    """``(word, start, end)`` in seconds from the segment start, matching :func:`render`.

    ``start`` and ``end`` are sample indices divided by ``sample_rate``: the word's burst
    is exactly samples ``[start * rate, end * rate)``; the audio outside bursts is silence.
    """
    words, _ = layout(transcript, voice_id, sample_rate, speed)
    return [(w.text, w.start / sample_rate, (w.start + w.length) / sample_rate) for w in words]


def phoneme_spans(word: Word) -> list[tuple[str, int, int]]:
    """``(phoneme, first sample, end sample)``: the word's letters and digits share its burst."""
    letters = [ch.lower() for ch in word.text if ch.isalnum()]
    edges = [word.start + word.length * i // len(letters) for i in range(len(letters) + 1)]
    return [(letter, edges[i], edges[i + 1]) for i, letter in enumerate(letters)]


def render_phoneme_timestamps(
    transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0
) -> list[tuple[str, float, float]]:
    """``(phoneme, start, end)`` like :func:`render_timestamps`; the emulator's phonemes
    are the lower-cased letters and digits of each word, sharing its burst equally."""
    words, _ = layout(transcript, voice_id, sample_rate, speed)
    return [
        (letter, start / sample_rate, end / sample_rate)
        for word in words
        for letter, start, end in phoneme_spans(word)
    ]
