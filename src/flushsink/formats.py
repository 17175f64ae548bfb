"""Audio formats: encodings, sample widths, numpy dtypes, G.711 tables, WAV headers.

Everything here is little endian on every host: dtypes are pinned ('<i2', '<f4').
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, cast

import numpy as np

from .errors import FormatError


class _Encoding(NamedTuple):
    width: int  # bytes per sample
    dtype: str  # numpy dtype of Segment.samples
    wav_tag: int  # WAVE_FORMAT_* tag
    bits: int


ENCODINGS: Mapping[str, _Encoding] = {
    "pcm_s16le": _Encoding(2, "<i2", 1, 16),  # WAVE_FORMAT_PCM
    "pcm_f32le": _Encoding(4, "<f4", 3, 32),  # WAVE_FORMAT_IEEE_FLOAT
    "pcm_alaw": _Encoding(1, "u1", 6, 8),  # WAVE_FORMAT_ALAW
    "pcm_mulaw": _Encoding(1, "u1", 7, 8),  # WAVE_FORMAT_MULAW
}

#: The sample rates Cartesia documents; any positive rate is accepted.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


@dataclass(frozen=True)
class AudioFormat:
    """Encoding and sample rate of mono raw audio, as in Cartesia's ``output_format``."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 44100

    def __post_init__(self) -> None:
        if not isinstance(self.encoding, str) or self.encoding not in ENCODINGS:
            raise FormatError(
                f"unknown encoding {self.encoding!r}; expected one of {', '.join(ENCODINGS)}"
            )
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= 1_000_000:
            raise FormatError(f"sample_rate must be an integer from 1 to 1000000, not {rate!r}")

    @property
    def sample_width(self) -> int:
        """Bytes per sample: 2, 4 or 1."""
        return ENCODINGS[self.encoding].width

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of ``Segment.samples`` (little endian)."""
        return np.dtype(ENCODINGS[self.encoding].dtype)

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.sample_width

    @classmethod
    def from_output_format(cls, output_format: Mapping[str, Any]) -> "AudioFormat":
        """Build from a Cartesia ``output_format`` dict (``container`` must be raw or absent)."""
        container = output_format.get("container", "raw")
        if container != "raw":
            raise FormatError(f"the websocket API only streams container 'raw', not {container!r}")
        try:
            return cls(output_format["encoding"], output_format["sample_rate"])
        except KeyError as exc:
            raise FormatError(f"output_format lacks {exc.args[0]!r}") from None

    def to_output_format(self) -> dict[str, Any]:
        return {"container": "raw", "encoding": self.encoding, "sample_rate": self.sample_rate}


DEFAULT_FORMAT = AudioFormat("pcm_s16le", 44100)


# --- G.711 (ITU-T G.711) ---------------------------------------------------------------

def _mulaw_decode_one(code: int) -> int:
    u = ~code & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - magnitude if u & 0x80 else magnitude - 0x84


def _alaw_decode_one(code: int) -> int:
    a = code ^ 0x55
    exponent = (a & 0x70) >> 4
    magnitude = (a & 0x0F) << 4
    if exponent == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


def _mulaw_encode_one(sample: int) -> int:
    # Works on 14 bits like the reference coder (and audioop), so that negative
    # values round the same way.
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + 0x21
    exponent = max(0, value.bit_length() - 6)
    if exponent >= 8:
        return 0x7F ^ mask
    return ((exponent << 4) | ((value >> (exponent + 1)) & 0x0F)) ^ mask


def _alaw_encode_one(sample: int) -> int:
    value = sample >> 3  # A-law works on 13 bits
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    exponent = max(0, value.bit_length() - 5)
    if exponent >= 8:
        return 0x7F ^ mask
    if exponent < 2:
        mantissa = (value >> 1) & 0x0F
    else:
        mantissa = (value >> exponent) & 0x0F
    return ((exponent << 4) | mantissa) ^ mask


MULAW_TO_INT16 = np.array([_mulaw_decode_one(c) for c in range(256)], dtype="<i2")
ALAW_TO_INT16 = np.array([_alaw_decode_one(c) for c in range(256)], dtype="<i2")
MULAW_TO_INT16.setflags(write=False)
ALAW_TO_INT16.setflags(write=False)

_ENCODE_TABLES: dict[str, np.ndarray] = {}


def _encode_table(encoding: str) -> np.ndarray:
    table = _ENCODE_TABLES.get(encoding)
    if table is None:
        one = _mulaw_encode_one if encoding == "pcm_mulaw" else _alaw_encode_one
        table = np.array([one(s) for s in range(-32768, 32768)], dtype=np.uint8)
        table.setflags(write=False)
        _ENCODE_TABLES[encoding] = table
    return table


def decode_g711(codes: np.ndarray, encoding: str) -> np.ndarray:
    """Expand mu-law or A-law codes (uint8) to int16 samples."""
    if encoding == "pcm_mulaw":
        return cast(np.ndarray, MULAW_TO_INT16[codes])
    if encoding == "pcm_alaw":
        return cast(np.ndarray, ALAW_TO_INT16[codes])
    raise FormatError(f"{encoding!r} is not a G.711 encoding")


def encode_g711(samples: np.ndarray, encoding: str) -> np.ndarray:
    """Compress int16 samples to mu-law or A-law codes (uint8)."""
    if encoding not in ("pcm_mulaw", "pcm_alaw"):
        raise FormatError(f"{encoding!r} is not a G.711 encoding")
    index = np.asarray(samples, dtype=np.int16).astype(np.int32) + 32768
    return _encode_table(encoding)[index]


def encode_samples(samples: np.ndarray, format: AudioFormat) -> bytes:
    """Encode float samples in [-1, 1] as raw little-endian bytes of ``format``."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    if format.encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    pcm16 = np.rint(x * 32767.0).astype("<i2")
    if format.encoding == "pcm_s16le":
        return pcm16.tobytes()
    return encode_g711(pcm16, format.encoding).tobytes()


# --- WAV -------------------------------------------------------------------------------

RIFF_MAX = 0xFFFFFFFF


def wav_header(format: AudioFormat, data_bytes: int) -> bytes:
    """The exact header of a WAV file holding ``data_bytes`` bytes of ``format`` audio.

    PCM uses the 16-byte ``fmt `` chunk; float and G.711 use the 18-byte one
    (cbSize = 0) and a ``fact`` chunk with the sample count, as the RIFF spec
    requires for non-PCM data. An odd-sized data chunk is followed by one pad byte
    (see :func:`wav_padding`), which the RIFF size includes.
    """
    info = ENCODINGS[format.encoding]
    width = info.width
    fmt_body = struct.pack(
        "<HHIIHH", info.wav_tag, 1, format.sample_rate, format.sample_rate * width, width, info.bits
    )
    if info.wav_tag == 1:
        chunks = b"fmt " + struct.pack("<I", 16) + fmt_body
    else:
        chunks = (
            b"fmt " + struct.pack("<I", 18) + fmt_body + struct.pack("<H", 0)
            + b"fact" + struct.pack("<II", 4, data_bytes // width)
        )
    riff_size = 4 + len(chunks) + 8 + data_bytes + (data_bytes & 1)
    if data_bytes < 0 or riff_size > RIFF_MAX:
        raise FormatError(f"{data_bytes} bytes of audio do not fit in a WAV file (RIFF limit 4 GiB)")
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)


def wav_padding(data_bytes: int) -> bytes:
    """The pad byte RIFF requires after an odd-sized data chunk."""
    return b"\0" if data_bytes & 1 else b""
