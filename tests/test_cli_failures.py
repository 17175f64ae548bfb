"""The flushsink command when things go wrong, run as a user would: a subprocess on loopback.

Whatever the user typed or the world did (a wrong key or URL, a port in use, a full disk, a
signal), the command prints one line ``flushsink: ...`` to stderr per problem, never a
traceback, keeps and lists every file it wrote, and exits non-zero: 1 when the run failed,
2 for a bad argument, 128 + N after signal N.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import soundfile
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from flushsink.cli import DEMO_VOICE, main
from flushsink.emulator import Emulator, render
from flushsink.formats import AudioFormat

WAIT = 30.0  # the longest any step may take before the test gives up (never a pass condition)
FORMAT = AudioFormat("pcm_s16le", 8000)
FORMAT_ARGS = ("--encoding", "pcm_s16le", "--sample-rate", "8000")
CHUNK_BYTES = 1600  # what the scripted server puts in one chunk


def environment():
    env = dict(os.environ)
    env.pop("CARTESIA_API_KEY", None)
    return env


def flushsink(*args, cwd, prefix=()):
    """Run the command to its end; ``prefix`` is Python run before it (e.g. a rlimit)."""
    if prefix:
        command = [sys.executable, "-c", "; ".join(
            [*prefix, "import runpy", "runpy.run_module('flushsink', run_name='__main__')"]), *args]
    else:
        command = [sys.executable, "-m", "flushsink", *args]
    return subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=120)


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "flushsink", *args], cwd=cwd,
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def one_line(stderr):
    """The one line a failure prints; no traceback, nothing else."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert re.match(r"flushsink: \S", lines[0]), stderr
    return lines[0]


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def table_rows(stdout):
    """The rows of the table ``say`` prints (without its header and summary)."""
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["flush_id", "duration"], stdout
    assert re.fullmatch(r"\d+ segments?, [\d.]+ s of audio.*", lines[-1]), stdout
    return lines[1:-1]


def samples(path):
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == FORMAT.sample_rate
    return data.tobytes()


@pytest.fixture
def emulator():
    with Emulator().running_in_thread() as emu:
        yield emu


# --- a scripted server: the test decides what is sent, and when ---------------------------

@contextlib.contextmanager
def scripted_server(handler):
    """A websocket server on 127.0.0.1 running ``handler(ws)`` for each connection."""
    with ws_serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        finally:
            server.shutdown()
            thread.join(WAIT)


def read_context(ws):
    """Read the requests of one context up to its last; returns its id and the text of
    each segment (a flush ends one, the last request the last)."""
    texts, text = [], ""
    while True:
        request = json.loads(ws.recv(timeout=WAIT))
        text += request["transcript"]
        if request.get("flush") or not request["continue"]:
            texts.append(text)
            text = ""
        if not request["continue"]:
            return request["context_id"], texts


def chunk_frames(context_id, flush_id, text):
    pcm = render(text, DEMO_VOICE, FORMAT)
    return [json.dumps({"type": "chunk", "context_id": context_id, "flush_id": flush_id,
                        "status_code": 206, "done": False,
                        "data": base64.b64encode(pcm[i:i + CHUNK_BYTES]).decode()})
            for i in range(0, len(pcm), CHUNK_BYTES)]


def end_frame(context_id, flush_id, last):
    if last:
        return json.dumps({"type": "done", "context_id": context_id, "status_code": 200,
                           "done": True})
    return json.dumps({"type": "flush_done", "context_id": context_id, "flush_id": flush_id,
                       "status_code": 206, "done": False, "flush_done": True})


def wait_until_closed(ws):
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            ws.recv(timeout=WAIT)


# --- values that make no sense: argparse refuses them, in one line, exit 2 ---------------

@pytest.mark.slow
@pytest.mark.parametrize("args, option", [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--chunk-ms", "0"], "--chunk-ms"),
    (["serve", "--chunk-ms", "-20"], "--chunk-ms"),
    (["serve", "--chunk-ms", "nan"], "--chunk-ms"),
    (["serve", "--chunk-ms", "inf"], "--chunk-ms"),
    (["serve", "--chunk-ms", "1e300"], "--chunk-ms"),
    (["bench", "--seconds", "-1"], "--seconds"),
    (["bench", "--seconds", "0"], "--seconds"),
    (["bench", "--seconds", "nan"], "--seconds"),
    (["say", "Hi.", "--url", "http://127.0.0.1:1/tts/websocket"], "--url"),
    (["say", "Hi.", "--url", "garbage"], "--url"),
])
def test_a_value_that_makes_no_sense_is_one_line_and_exit_2(tmp_path, args, option):
    result = flushsink(*args, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert option in line and f"flushsink {args[0]} --help" in line
    assert result.stdout == ""


@pytest.mark.parametrize("args, option", [
    (["say", "Hi.", "--timeout", "0"], "--timeout"),
    (["say", "Hi.", "--timeout", "-1"], "--timeout"),
    (["say", "Hi.", "--timeout", "nan"], "--timeout"),
    (["demo", "--timeout", "inf"], "--timeout"),
    (["say", "Hi.", "--url", "ws://"], "--url"),
    (["say", "Hi.", "--url", "ws://:99999"], "--url"),
    (["say", "Hi.", "--url", "ws://127.0.0.1:70000"], "--url"),
    (["say", "Hi.", "--api-key", ""], "--api-key"),  # an unset "$KEY": not the emulator
    (["say", "Hi.", "--out", ""], "--out"),  # would be the current directory
    (["say", "Hi.", "--voice", ""], "--voice"),
    (["say", "Hi.", "--model", ""], "--model"),
    (["say", "Hi.", "--language", ""], "--language"),
    (["say", "Hi.", ""], "TEXT"),  # the server refuses a blank transcript
    (["say", "Hi.", "   "], "TEXT"),
    (["say", "Hi.", "--sample-rate", "12345"], "--sample-rate"),
    (["serve", "--host", ""], "--host"),  # would listen on every interface
    (["serve", "--api-key", ""], "--api-key"),
    (["serve", "--idle-timeout", "-1"], "--idle-timeout"),
    (["serve", "--idle-timeout", "nan"], "--idle-timeout"),
    (["serve", "--pace", "-1"], "--pace"),
    (["serve", "--pace", "nan"], "--pace"),
    (["serve", "--pace", "slow"], "--pace"),
    (["serve", "--flush-id-base", "2"], "--flush-id-base"),
    (["bench", "--seconds", "inf"], "--seconds"),
    (["bench", "--seconds", "1e9"], "--seconds"),
    (["bench", "--chunk-ms", "0"], "--chunk-ms"),
    (["bench", "--chunk-ms", "-100"], "--chunk-ms"),
    (["bench", "--sample-rate", "0"], "--sample-rate"),
    (["bench", "--sample-rate", "-8000"], "--sample-rate"),
    ([], "COMMAND"),
    (["say"], "TEXT"),
])
def test_other_values_that_make_no_sense(tmp_path, monkeypatch, capsys, args, option):
    # the same parser as above; in-process, to spare an interpreter start per case
    monkeypatch.chdir(tmp_path)  # should a value get through, its files land here
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert option in one_line(err) and out == ""


# --- the server refuses, or is not what the URL says ---------------------------------------

@contextlib.contextmanager
def canned_server(answer, accepted=None):
    """A TCP server on 127.0.0.1 that reads a request head and answers ``answer``; each
    connection it accepts is appended to ``accepted`` when given."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            if accepted is not None:
                accepted.append(conn.getpeername())
            with conn:
                conn.settimeout(WAIT)
                request = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in request:
                        piece = conn.recv(4096)
                        if not piece:
                            break
                        request += piece
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(WAIT)
        listener.close()


def say_fails(url, cwd, *extra):
    """say against ``url`` fails in one line (handshake retries off: their waits are
    test_limits' and test_cli's business)."""
    result = flushsink("say", "Hi.", "--url", url, "--retries", "0", *extra, cwd=cwd)
    assert result.returncode == 1, result
    assert result.stdout == ""  # nothing was written, so no table
    assert not os.path.exists(os.path.join(cwd, "out")) or not files_under(os.path.join(cwd, "out"))
    return one_line(result.stderr)


def test_a_wrong_api_key(tmp_path):
    with Emulator(api_key="secret").running_in_thread() as emu:
        line = say_fails(emu.url, tmp_path, "--api-key", "wrong")
    assert "401" in line and "--api-key" in line and "wrong" not in line


def test_a_wrong_url_path(tmp_path, emulator):
    line = say_fails(emulator.url + "/v2/tts/websocket", tmp_path)
    assert "404" in line and "/v2/tts/websocket" in line


@pytest.mark.parametrize("answer, expected", [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "404"),
    (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
     "retry after 7 s"),
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n", "500"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "ws://127.0.0.1:"),  # not HTTP at all
    (b"", "ws://127.0.0.1:"),  # closes without a word
])
def test_a_server_that_refuses_or_is_not_a_websocket_server(tmp_path, answer, expected):
    with canned_server(answer) as url:
        line = say_fails(url, tmp_path)
    assert expected in line


@pytest.mark.parametrize("retries, handshakes", [(None, 4), ("1", 2), ("0", 1)])
def test_say_retries_a_refused_handshake(tmp_path, retries, handshakes):
    """A 429 (Retry-After: 0): the first handshake and three retries by default, then the
    one line; --retries N says how many."""
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n"
    accepted = []
    with canned_server(answer, accepted) as url:
        option = [] if retries is None else ["--retries", retries]
        result = flushsink("say", "Hi.", "--url", url, *option, cwd=tmp_path)
    assert result.returncode == 1 and len(accepted) == handshakes
    assert "429" in one_line(result.stderr)


def test_wss_to_a_plain_server(tmp_path, emulator):
    url = emulator.url.replace("ws://", "wss://")
    line = say_fails(url, tmp_path)
    assert url in line and "TLS" in line


def test_nothing_listening(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    assert f"127.0.0.1:{port}" in say_fails(f"ws://127.0.0.1:{port}", tmp_path)


def test_serve_on_a_port_in_use(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = flushsink("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert result.stdout == ""


# --- signals: what was received is kept, listed, and the exit says which signal --------------

SIGNALS = [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="SIGINT is ignored here, so it is in the command too (as in any shell job)"))]


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_say_keeps_the_audio_received_as_partial_files(tmp_path, signum):
    texts = ["One.", "Two three four five six seven."]
    cut = 3  # chunks of the second segment sent before the server goes quiet
    quiet = threading.Event()

    def handler(ws):
        context_id, received = read_context(ws)
        assert received == texts
        for frame in chunk_frames(context_id, 1, texts[0]):
            ws.send(frame)
        ws.send(end_frame(context_id, 1, last=False))
        for frame in chunk_frames(context_id, 2, texts[1])[:cut]:
            ws.send(frame)
        quiet.set()
        wait_until_closed(ws)

    with scripted_server(handler) as url:
        say = start("say", *texts, "--url", url, "--out", "o", *FORMAT_ARGS, cwd=tmp_path)
        try:
            assert quiet.wait(WAIT), say.stderr.read()
            wait_for(lambda: any(f.endswith("1.wav") for f in files_under(tmp_path / "o")),
                     "the first file")
            say.send_signal(signum)
            stdout, stderr = say.communicate(timeout=WAIT)
        finally:
            say.kill()
            say.wait()
    assert say.returncode == 128 + signum
    assert signal.Signals(signum).name in one_line(stderr)
    first, second = files_under(tmp_path / "o")
    assert first.endswith(os.sep + "1.wav") and second.endswith(os.sep + "2.partial.wav")
    assert samples(tmp_path / "o" / first) == render(texts[0], DEMO_VOICE, FORMAT)
    assert samples(tmp_path / "o" / second) == render(texts[1], DEMO_VOICE, FORMAT)[
        :cut * CHUNK_BYTES]
    rows = table_rows(stdout)
    assert len(rows) == 2
    assert os.path.join("o", first) in rows[0] and "complete" in rows[0]
    assert os.path.join("o", second) in rows[1]
    assert f"incomplete (stopped by {signal.Signals(signum).name})" in rows[1]


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    serve = start("serve", "--port", "0", cwd=tmp_path)
    try:
        url = re.search(r"ws://\S+", serve.stdout.readline()).group(0)
        with ws_connect(url) as ws:
            serve.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=WAIT)
        stdout, stderr = serve.communicate(timeout=WAIT)
    finally:
        serve.kill()
        serve.wait()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001  # "going away"
    assert serve.returncode == 0 and "Traceback" not in stderr


# --- the connection drops mid-segment: the partial audio is kept and listed ----------------

def test_a_connection_closed_mid_segment(tmp_path, emulator):
    text = "Two three four five six seven."
    url = emulator.ws_url + "?fault=close@chunk:3"
    result = flushsink("say", text, "--url", url, "--out", "o", *FORMAT_ARGS, cwd=tmp_path)
    assert result.returncode == 1
    assert "1011" in one_line(result.stderr)
    (partial,) = files_under(tmp_path / "o")
    assert partial.endswith(os.sep + "1.partial.wav")
    chunk = emulator.chunk_bytes(FORMAT)
    assert samples(tmp_path / "o" / partial) == render(text, DEMO_VOICE, FORMAT)[:3 * chunk]
    (row,) = table_rows(result.stdout)
    assert os.path.join("o", partial) in row and "incomplete" in row


# --- files that cannot be written: one line each, the other segments go on -----------------

def assert_write_failures(result, written, failed):
    """``written``: files that must exist; ``failed``: flush ids reported once each."""
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(failed), result.stderr
    for line, flush_id in zip(lines, failed):
        assert line.startswith(f"flushsink: cannot write flush {flush_id} "), line
    rows = table_rows(result.stdout)
    assert len(rows) == len(written) + len(failed)
    for row in rows:
        flush_id = int(row.split()[0])
        assert ("not written" in row) == (flush_id in failed), row
    return rows


def test_a_directory_that_becomes_unwritable_fails_each_later_segment_once(tmp_path):
    texts = ["One.", "Two three four five six seven.", "Three."]
    go_on = threading.Event()

    def handler(ws):
        context_id, received = read_context(ws)
        for flush_id, text in enumerate(received, 1):
            for frame in chunk_frames(context_id, flush_id, text):
                ws.send(frame)
            ws.send(end_frame(context_id, flush_id, last=flush_id == len(received)))
            go_on.wait(WAIT)
        wait_until_closed(ws)

    with scripted_server(handler) as url:
        say = start("say", *texts, "--url", url, "--out", "o", *FORMAT_ARGS, cwd=tmp_path)
        try:
            wait_for(lambda: files_under(tmp_path / "o"), "the first file")
            (first,) = files_under(tmp_path / "o")
            # The context's directory becomes a file: even root cannot write into that.
            context_dir = tmp_path / "o" / os.path.dirname(first)
            context_dir.rename(tmp_path / "moved")
            context_dir.write_bytes(b"")
            go_on.set()
            stdout, stderr = say.communicate(timeout=WAIT)
        finally:
            say.kill()
            say.wait()
    result = subprocess.CompletedProcess(say.args, say.returncode, stdout, stderr)
    assert_write_failures(result, written=[1], failed=[2, 3])
    assert all("Not a directory" in line for line in stderr.splitlines())
    assert samples(tmp_path / "moved" / os.path.basename(first)) == render(
        texts[0], DEMO_VOICE, FORMAT)


def wav_bytes(text):
    return 44 + len(render(text, DEMO_VOICE, FORMAT))


def test_a_file_too_large_for_the_disk_fails_only_its_segment(tmp_path, emulator):
    # RLIMIT_FSIZE makes a write fail part-way as a full disk would (EFBIG rather than
    # ENOSPC), for root too; Python ignores SIGXFSZ, so the write returns the error.
    texts = ["One.", "Stay hungry, stay foolish, and never stop asking why the sky is blue.",
             "Three."]
    limit = 3 * max(wav_bytes(texts[0]), wav_bytes(texts[2]))
    assert limit < wav_bytes(texts[1])
    result = flushsink("say", *texts, "--url", emulator.url, "--out", "o", *FORMAT_ARGS,
                       cwd=tmp_path, prefix=[
                           "import resource",
                           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))"])
    assert_write_failures(result, written=[1, 3], failed=[2])
    assert "File too large" in result.stderr
    files = files_under(tmp_path / "o")
    assert [os.path.basename(f) for f in files] == ["1.wav", "3.wav"]  # no temp file left
    assert samples(tmp_path / "o" / files[1]) == render(texts[2], DEMO_VOICE, FORMAT)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs, where the system lets this process mount one (root, not in a
    restricted container); else the test is skipped."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs",
                              str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_a_full_disk_fails_only_the_segment_that_does_not_fit(tmp_path, emulator, tiny_disk):
    texts = ["One.", "Stay hungry, stay foolish, and never stop asking why the sky is blue "
             "at noon, at dusk, at midnight and at dawn, every single day of the year.",
             "Three."]
    assert wav_bytes(texts[1]) > 64 * 1024
    result = flushsink("say", *texts, "--url", emulator.url, "--out", str(tiny_disk),
                       *FORMAT_ARGS, cwd=tmp_path)
    assert_write_failures(result, written=[1, 3], failed=[2])
    assert "No space left on device" in result.stderr
    files = files_under(tiny_disk)
    assert [os.path.basename(f) for f in files] == ["1.wav", "3.wav"]
    assert samples(tiny_disk / files[0]) == render(texts[0], DEMO_VOICE, FORMAT)


def test_an_output_directory_that_cannot_exist_fails_before_connecting(tmp_path, emulator):
    (tmp_path / "a-file").write_bytes(b"")  # a parent that is a file: refused even to root
    result = flushsink("say", "One.", "Two.", "--url", emulator.url, "--out", "a-file/out",
                       cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "a-file/out" in line and "Not a directory" in line
    assert result.stdout == ""
    assert emulator.stats.connections == 0  # nothing was spent on the server


# --- the output is read by another program that stops reading ------------------------------

def test_stdout_closed_early(tmp_path, emulator):
    say = subprocess.Popen([sys.executable, "-m", "flushsink", "say", "One.", "--url",
                            emulator.url, "--out", "o"], cwd=tmp_path, env=environment(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    say.stdout.close()  # like `flushsink say ... | head -0`
    stderr = say.stderr.read()
    say.wait(WAIT)
    say.stderr.close()
    assert say.returncode == 128 + 13  # as a program killed by SIGPIPE
    # nobody is reading: a complaint about the pipe would only be noise
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert files_under(tmp_path / "o")  # the audio is written all the same
