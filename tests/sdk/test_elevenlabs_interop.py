"""The official ``elevenlabs`` SDK (2.78.0) against the ElevenLabs emulator.

Skipped unless ``elevenlabs`` is installed; it runs in a venv of its own (the SDK pins its
own dependencies). Its only websocket TTS entry point is the sync
``client.text_to_speech.convert_realtime``, on ``stream-input``; it has no multi-context
client, so ``multi-stream-input`` is covered by tests/test_emulator_elevenlabs.py alone.

Reaching a local server: ``RealtimeTextToSpeechClient`` builds its websocket base from
``base_url`` with the scheme forced to ``wss`` (``_ws_base_url``), so a plain ``ws://``
emulator is out of reach through any public option (/work/shared/providers.md 4.4). Two
ways in, both tested: set the private attribute ``client.text_to_speech._ws_base_url``
after construction, or serve TLS with a certificate the client trusts (``SSL_CERT_FILE``).

Every frame the SDK receives is also kept (the ``connect`` its module calls is wrapped, and
the socket's ``recv`` with it) and fed to ``Sink(envelope=ELEVENLABS)``: the Sink's segment
must hold exactly the audio the SDK yielded.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

elevenlabs = pytest.importorskip("elevenlabs")

from elevenlabs import VoiceSettings  # noqa: E402
from elevenlabs.client import ElevenLabs  # noqa: E402
from elevenlabs.core.api_error import ApiError  # noqa: E402

import flushsink  # noqa: E402
from flushsink.emulator import ElevenLabsEmulator, render  # noqa: E402
from flushsink.envelopes import ELEVENLABS  # noqa: E402
from flushsink.formats import AudioFormat  # noqa: E402

# The SDK reads ConnectionClosed.code and .reason, which websockets deprecates: its
# warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:ConnectionClosed.* is deprecated:DeprecationWarning")

VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
MODEL_ID = "eleven_flash_v2_5"
API_KEY = "sk-test"
PARTS = ["Hello there. ", "How are", " you today?"]
#: The SDK's ``OutputFormat`` literals the emulator renders, and what each one means.
FORMATS = {
    "pcm_16000": AudioFormat("pcm_s16le", 16000),
    "pcm_22050": AudioFormat("pcm_s16le", 22050),
    "pcm_24000": AudioFormat("pcm_s16le", 24000),
    "pcm_44100": AudioFormat("pcm_s16le", 44100),
    "ulaw_8000": AudioFormat("pcm_mulaw", 8000),
}


@pytest.fixture
def emulator() -> Iterator[ElevenLabsEmulator]:
    with ElevenLabsEmulator(api_key=API_KEY).running_in_thread() as emu:
        yield emu


@pytest.fixture
def sdk_frames(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every frame the SDK's sockets receive, in order, as their ``recv`` returned it."""
    import elevenlabs.realtime_tts as realtime_tts

    frames: list[Any] = []
    connect = realtime_tts.connect

    def recording_connect(*args: Any, **kwargs: Any) -> Any:
        socket = connect(*args, **kwargs)
        receive = socket.recv

        def recv(*args: Any, **kwargs: Any) -> Any:
            frames.append(receive(*args, **kwargs))
            return frames[-1]

        socket.recv = recv  # what `with connect(...) as socket` then reads from
        return socket

    monkeypatch.setattr(realtime_tts, "connect", recording_connect)
    return frames


def check_sink(frames: list[Any], fmt: AudioFormat, audio: bytes) -> None:
    """The frames the SDK received, fed to a Sink: one segment (the stream-input endpoint's
    one context, no id) holding exactly what the SDK yielded, ended by ``isFinal``."""
    sink = flushsink.Sink(fmt, envelope=ELEVENLABS)
    events = [event for frame in frames for event in sink.feed(frame)]
    assert [type(e) for e in events] == [flushsink.SegmentReady, flushsink.ContextDone]
    segment = events[0].segment
    assert (segment.context_id, segment.complete, segment.format) == (None, True, fmt)
    assert bytes(segment.pcm()) == audio
    assert events[1].context_id is None


def sdk_client(emu: ElevenLabsEmulator, api_key: str = API_KEY) -> Any:
    client = ElevenLabs(api_key=api_key, base_url=f"http://127.0.0.1:{emu.port}")
    # The SDK dials wss://<base_url's host> whatever base_url's scheme: this private
    # attribute is the only way to a plain ws:// server short of TLS (providers.md 4.4).
    assert client.text_to_speech._ws_base_url == f"wss://127.0.0.1:{emu.port}"
    client.text_to_speech._ws_base_url = emu.url
    return client


def test_the_sdk_is_the_pinned_one():
    assert elevenlabs.__version__ == "2.78.0"


@pytest.mark.parametrize("output_format", list(FORMATS))
def test_convert_realtime_yields_the_rendered_audio(emulator: ElevenLabsEmulator, sdk_frames: list[Any],
                                                    output_format: str):
    client = sdk_client(emulator)
    audio = b"".join(client.text_to_speech.convert_realtime(
        VOICE_ID, text=iter(PARTS), model_id=MODEL_ID, output_format=output_format))
    # One generation at the end of input, of everything sent (the SDK's text_chunker
    # moves spaces between its chunks, which does not change the words).
    assert audio == render("".join(PARTS), VOICE_ID, FORMATS[output_format])
    check_sink(sdk_frames, FORMATS[output_format], audio)
    [log] = emulator.connections
    query = f"model_id={MODEL_ID}&output_format={output_format}"
    assert log.path == f"/v1/text-to-speech/{VOICE_ID}/stream-input?{query}"
    assert (log.headers["xi-api-key"], log.headers["user-agent"]) == (API_KEY, "elevenlabs/2.78.0")
    assert log.received[0] == {"text": " ", "try_trigger_generation": True, "voice_settings": None,
                               "generation_config": {"chunk_length_schedule": [50]}}
    assert log.received[-1] == {"text": ""}
    assert all(m["try_trigger_generation"] is True for m in log.received[1:-1])
    assert log.sent["final"] == 1 and log.close_code == 1000


def test_llm_token_deltas_are_rechunked_without_changing_the_words(emulator: ElevenLabsEmulator,
                                                                   sdk_frames: list[Any]):
    deltas = ["Hel", "lo", " wor", "ld.", " How", " are you", "?"]
    audio = b"".join(sdk_client(emulator).text_to_speech.convert_realtime(
        VOICE_ID, text=iter(deltas), model_id=MODEL_ID, output_format="pcm_24000"))
    assert audio == render("Hello world. How are you?", VOICE_ID, FORMATS["pcm_24000"])
    check_sink(sdk_frames, FORMATS["pcm_24000"], audio)
    sent = [m["text"] for m in emulator.connections[0].received[1:-1]]
    assert "".join(sent).split() == ["Hello", "world.", "How", "are", "you?"]


def test_voice_settings_speed_reaches_the_render(emulator: ElevenLabsEmulator, sdk_frames: list[Any]):
    settings = VoiceSettings(stability=0.5, similarity_boost=0.75, speed=1.15)
    audio = b"".join(sdk_client(emulator).text_to_speech.convert_realtime(
        VOICE_ID, text=iter(PARTS), output_format="pcm_16000", voice_settings=settings))
    assert audio == render("".join(PARTS), VOICE_ID, FORMATS["pcm_16000"], speed=1.15)
    check_sink(sdk_frames, FORMATS["pcm_16000"], audio)


def test_a_wrong_key_raises_api_error_1008(emulator: ElevenLabsEmulator):
    stream = sdk_client(emulator, api_key="sk-wrong").text_to_speech.convert_realtime(
        VOICE_ID, text=iter(PARTS), output_format="pcm_24000")
    with pytest.raises(ApiError) as caught:
        b"".join(stream)
    # The body is the error message the SDK last read, or the close reason if a send
    # failed first: both carry the message.
    assert caught.value.status_code == 1008 and "Invalid API key" in str(caught.value.body)


def test_the_sdk_default_mp3_format_is_refused_clearly(emulator: ElevenLabsEmulator):
    stream = sdk_client(emulator).text_to_speech.convert_realtime(VOICE_ID, text=iter(PARTS))
    with pytest.raises(ApiError) as caught:
        b"".join(stream)
    assert caught.value.status_code == 1008 and "mp3_44100_128" in str(caught.value.body)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "flushsink emulator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_over_tls_with_public_options_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           sdk_frames: list[Any]):
    cert_file, key_file = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    # websockets' client builds its context with ssl.create_default_context(), which reads
    # SSL_CERT_FILE when it is called: the SDK then trusts this certificate (and no other).
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with ElevenLabsEmulator(ssl=context).running_in_thread() as emu:
        assert emu.url.startswith("wss://")
        client = ElevenLabs(api_key=API_KEY, base_url=f"https://127.0.0.1:{emu.port}")
        audio = b"".join(client.text_to_speech.convert_realtime(
            VOICE_ID, text=iter(PARTS), model_id=MODEL_ID, output_format="pcm_24000"))
    assert audio == render("".join(PARTS), VOICE_ID, FORMATS["pcm_24000"])
    check_sink(sdk_frames, FORMATS["pcm_24000"], audio)
