"""Faults: the connection dropped at every point of a flush, a full or read-only disk during
finalize, and a process killed while it writes.

Extends tests/test_client.py (asyncio client, abort at four points, s16le WAV) to both
clients, both ways of losing a connection (an abort without close frame, a server close),
odd chunk sizes in f32le so a drop can split a sample, the raw container (the exact bytes,
trailing ones included), two contexts in flight, and a TCP cut inside a websocket frame.

Disk faults are real where possible: a tiny tmpfs for ENOSPC and a read-only remount for
EROFS, mounted in a private mount namespace (``unshare -m``) of a child process so nothing
leaks into the machine's mounts even if a test dies; skipped where mounting is not allowed
(not root), with an injected OSError covering the same paths.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

import flushsink
from flushsink import sync
from flushsink.emulator import Emulator, render
from flushsink.errors import ConnectionLost, ContextClosed, WriteError
from flushsink.formats import AudioFormat
from flushsink.segments import Segment

from helpers.scripted import ScriptedServer, audio_of, chunk, collect_all, done, run, run_script

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SEED = ["Stay hungry, ", "stay foolish."]
F32 = {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 24000}
TIMEOUT = 10


def expected(text: str, output_format=F32) -> bytes:
    return render(text, VOICE, AudioFormat.from_output_format(output_format))


def received(segment: Segment) -> bytes:
    return segment.samples.tobytes() + segment.trailing_bytes


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- the connection dropped at every point of a flush ------------------------------------------

POINTS = ["chunk:0", "chunk:1", "chunk:3", "flush_done", "done"]


async def seed_flow_async(url, writer):
    async with flushsink.connect(url, writer=writer, receive_timeout=TIMEOUT) as tts:
        ctx = tts.context(voice=VOICE, output_format=F32, context_id="ctx")
        try:  # a request after the drop may fail itself: then the context has ended
            await ctx.push(SEED[0])
            await ctx.flush()
            await ctx.push(SEED[1])
            await ctx.no_more_inputs()
        except (ConnectionLost, ContextClosed):
            pass
        segments = []
        with pytest.raises(ConnectionLost) as lost:
            async for segment in ctx.segments():
                segments.append(segment)
        return segments, str(lost.value)


def seed_flow_sync(url, writer):
    with sync.connect(url, writer=writer, receive_timeout=TIMEOUT) as tts:
        ctx = tts.context(voice=VOICE, output_format=F32, context_id="ctx")
        try:  # a request after the drop may fail itself: then the context has ended
            ctx.push(SEED[0])
            ctx.flush()
            ctx.push(SEED[1])
            ctx.no_more_inputs()
        except (ConnectionLost, ContextClosed):
            pass
        segments = []
        with pytest.raises(ConnectionLost) as lost:
            for segment in ctx.segments():
                segments.append(segment)
        return segments, str(lost.value)


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("how", ["drop", "close:1011"])
@pytest.mark.parametrize("client", ["async", "sync"])
def test_lost_connection_keeps_every_received_byte(tmp_path, client, how, point):
    # f32le (4-byte samples) in chunks of an odd byte count: a drop can split a sample
    fault = f"{how}@{point}"
    writer = flushsink.FileWriter(tmp_path, container="raw")
    options = dict(chunk_ms=20, odd_chunks=True)
    if client == "async":
        async def main():
            # in the client's loop: the client's four requests are all read by the server
            # before it streams, so its abort() closes with a FIN (see below)
            async with Emulator(**options) as emu:
                flow = await seed_flow_async(f"{emu.ws_url}?fault={fault}", writer)
                return flow, emu.connections[0], emu.chunk_bytes(AudioFormat.from_output_format(F32))
        (segments, message), log, step = run(main())
    else:
        with Emulator(**options).running_in_thread() as emu:
            segments, message = seed_flow_sync(f"{emu.ws_url}?fault={fault}", writer)
            log, step = emu.connections[0], emu.chunk_bytes(AudioFormat.from_output_format(F32))
    assert step % 4 != 0
    first, second = expected(SEED[0]), expected(SEED[1])
    assert ("without a close frame" if how == "drop" else "1011") in message
    want = {  # (flush_id, complete, bytes) of each segment the context must get
        "chunk:0": [],
        "chunk:1": [(1, False, first[:step])],
        "chunk:3": [(1, False, first[:3 * step])],
        "flush_done": [(1, False, first)],
        "done": [(1, True, first), (2, False, second)],
    }[point]
    got = [(s.flush_id, s.complete, received(s)) for s in segments]
    if how == "drop" and log.messages_received < 4:
        # The server aborted with client requests still unread in its socket: its kernel
        # answers with a RST, and the client's kernel throws away what the client had not
        # read yet (TCP, not flushsink). What the client did read must still all be there.
        assert len(got) <= len(want)
        for (fid, complete, data), (wfid, wcomplete, wdata) in zip(got, want):
            assert fid == wfid and wdata.startswith(data)
            assert complete == wcomplete or not complete
    else:
        assert got == want
        assert sum(len(b) for _, _, b in want) == log.audio_bytes_sent  # all that was sent
    for segment in segments:
        name = f"{segment.flush_id}.raw" if segment.complete else f"{segment.flush_id}.partial.raw"
        assert segment.path == str(tmp_path / "ctx" / name)
        assert Path(segment.path).read_bytes() == received(segment)  # trailing bytes too
        if not segment.complete:
            assert "connection" in segment.error
    assert files_under(tmp_path) == sorted(os.path.relpath(s.path, tmp_path) for s in segments)


@pytest.mark.parametrize("how", ["drop", "close:1011"])
def test_two_contexts_in_flight_both_keep_their_audio(tmp_path, how):
    texts = {"one": " ".join(["alpha"] * 12), "two": " ".join(["beta"] * 12)}

    async def main(url):
        async with flushsink.connect(url, writer=flushsink.FileWriter(tmp_path),
                                     receive_timeout=TIMEOUT) as tts:
            contexts = [tts.context(voice=VOICE, output_format=F32, context_id=cid)
                        for cid in texts]
            for ctx in contexts:
                await ctx.push(texts[ctx.context_id])
                await ctx.no_more_inputs()
            return await collect_all(contexts)

    async def in_loop():
        async with Emulator(chunk_ms=20, odd_chunks=True) as emu:
            results = await main(f"{emu.ws_url}?fault={how}@chunk:6")
            return results, emu.connections[0].audio_bytes_sent

    results, sent = run(in_loop())
    total = 0
    for cid, (segments, failure) in results.items():
        assert isinstance(failure, ConnectionLost), cid
        assert len(segments) == 1 and not segments[0].complete
        assert expected(texts[cid]).startswith(received(segments[0]))
        data, _ = soundfile.read(segments[0].path, dtype="float32")
        assert data.tobytes() == segments[0].samples.tobytes()
        total += len(received(segments[0]))
    if how == "drop":  # an abort loses what was still in flight (TCP), never what arrived
        assert 0 < total <= sent
    else:
        assert total == sent  # a clean close: every byte sent was received and kept


def test_tcp_cut_inside_a_websocket_frame():
    a1, b1 = audio_of("a", 0), audio_of("b", 0)
    payload = chunk("a", 1, bytes(3000))
    header = b"\x81\x7e" + struct.pack(">H", len(payload))  # FIN + text, 16-bit length
    script = [chunk("a", 1, a1), chunk("b", 1, b1), ("raw_then_abort", header + payload[:1000])]

    class Cutting(ScriptedServer):
        async def _handle(self, ws):
            await self._recv(ws, self.wait_for)
            for step in self.script[:-1]:
                await ws.send(step, text=True)
            await asyncio.sleep(0.05)  # the frames above reach the client first
            ws.transport.write(self.script[-1][1])
            await asyncio.sleep(0.05)
            ws.transport.abort()

    async def main():
        async with Cutting(script, wait_for=2) as server:
            async with flushsink.connect(server.url, receive_timeout=TIMEOUT) as tts:
                contexts = [tts.context(voice="v", context_id=cid) for cid in ("a", "b")]
                for ctx in contexts:
                    await ctx.push("x")
                return await collect_all(contexts)

    results = run(main())
    for cid, audio in (("a", a1), ("b", b1)):
        segments, failure = results[cid]
        assert isinstance(failure, ConnectionLost)
        assert [(received(s), s.complete) for s in segments] == [(audio, False)]


# --- the disk: full, read-only -------------------------------------------------------------------

DISK_SCRIPT = textwrap.dedent("""
    import errno, json, os, subprocess, sys
    import numpy as np
    import flushsink.writers as writers
    from flushsink import FileWriter, WriteError
    from flushsink.formats import AudioFormat
    from flushsink.segments import Segment

    scenario, mnt, elsewhere = sys.argv[1:4]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], check=True)
    os.makedirs(os.path.join(mnt, "c"))
    with open(os.path.join(mnt, "c", "1.wav"), "wb") as f:
        f.write(b"old audio")
    # 300,000 int16 samples: 600 kB, more than the 256 kB file system holds
    seg = Segment("c", 1, AudioFormat("pcm_s16le", 8000), np.arange(300_000, dtype="<i2"))
    new = Segment("c", 2, AudioFormat("pcm_s16le", 8000), np.arange(1000, dtype="<i2"))
    free = os.statvfs(mnt).f_bfree
    if scenario == "rofs":
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        seg = new
    if scenario == "rofs_at_rename":  # the disk turns read-only between write and rename
        real_replace = os.replace
        def replace(src, dst):
            subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
            return real_replace(src, dst)
        writers.os.replace = replace
        seg = new
    try:
        FileWriter(mnt).write(seg)
        outcome = None
    except WriteError as exc:
        outcome = {"errno": errno.errorcode.get(exc.errno), "carries": exc.segment is seg,
                   "path": exc.path, "segment_path": seg.path}
    writers.os.replace = os.replace if scenario != "rofs_at_rename" else real_replace
    listing = sorted(os.listdir(os.path.join(mnt, "c")))
    old = open(os.path.join(mnt, "c", "1.wav"), "rb").read().decode()
    freed = os.statvfs(mnt).f_bfree == free
    retry = FileWriter(elsewhere).write(seg)
    with open(retry, "rb") as f:
        size = len(f.read())
    print(json.dumps({"outcome": outcome, "listing": listing, "old": old, "freed": freed,
                      "retry": os.path.relpath(retry, elsewhere), "size": size,
                      "nbytes": seg.nbytes}))
""")


def run_in_mount_namespace(scenario: str, tmp_path: Path) -> dict:
    if shutil.which("unshare") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to mount a tmpfs in a private namespace")
    mnt, elsewhere = tmp_path / "mnt", tmp_path / "elsewhere"
    mnt.mkdir()
    import flushsink.writers
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(flushsink.writers.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p))
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", DISK_SCRIPT,
         scenario, str(mnt), str(elsewhere)],
        capture_output=True, text=True, env=env, timeout=60)
    if result.returncode != 0 and ("mount" in result.stderr and
                                   ("permission" in result.stderr.lower()
                                    or "not permitted" in result.stderr)):
        pytest.skip(f"cannot mount here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    assert list(mnt.iterdir()) == []  # the tmpfs lived and died in the child's namespace
    return json.loads(result.stdout)


def test_disk_full_leaves_the_old_file_and_no_temp_file(tmp_path):
    report = run_in_mount_namespace("enospc", tmp_path)
    assert report["outcome"] == {"errno": "ENOSPC", "carries": True,
                                 "path": str(tmp_path / "mnt" / "c" / "1.wav"),
                                 "segment_path": None}
    assert report["listing"] == ["1.wav"] and report["old"] == "old audio"
    assert report["freed"]  # the temp file's blocks were given back
    assert report["retry"] == os.path.join("c", "1.wav") and report["size"] == 44 + 600_000


def test_read_only_disk_is_a_write_error_and_a_retry_elsewhere_works(tmp_path):
    report = run_in_mount_namespace("rofs", tmp_path)
    assert report["outcome"]["errno"] == "EROFS" and report["outcome"]["carries"]
    assert report["listing"] == ["1.wav"] and report["old"] == "old audio"
    assert report["retry"] == os.path.join("c", "2.wav") and report["size"] == 44 + 2000


def test_disk_turning_read_only_at_the_rename(tmp_path):
    report = run_in_mount_namespace("rofs_at_rename", tmp_path)
    assert report["outcome"]["errno"] == "EROFS" and report["outcome"]["carries"]
    assert report["old"] == "old audio"
    assert "2.wav" not in report["listing"]  # never a file under the final name
    # the temp file cannot be removed from a read-only file system: the one case that
    # leaves a hidden .2.wav.*.tmp behind without a crash
    leftovers = [n for n in report["listing"] if n != "1.wav"]
    assert all(n.startswith(".2.wav.") and n.endswith(".tmp") for n in leftovers), leftovers
    assert report["retry"] == os.path.join("c", "2.wav")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT, errno.ENOSPC])
def test_injected_failure_to_create_the_temp_file(tmp_path, monkeypatch, code):
    # the same path without mounting: the temp file cannot even be created
    import flushsink.writers as writers
    seg = Segment("c", 1, AudioFormat("pcm_s16le", 8000), np.arange(100, dtype="<i2"))
    writer = flushsink.FileWriter(tmp_path / "out")
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(writers.os, "open", refuse)
    with pytest.raises(WriteError) as info:
        writer.write(seg)
    monkeypatch.undo()
    assert info.value.errno == code and info.value.segment is seg and seg.path is None
    assert files_under(tmp_path) == []
    retry = flushsink.FileWriter(tmp_path / "elsewhere").write(seg)
    assert soundfile.read(retry, dtype="int16")[0].tolist() == list(range(100))


# --- a failed write inside the client ---------------------------------------------------------

def test_a_write_error_fails_only_its_segment(tmp_path):
    """Regression: a WriteError inside Session.receive used to escape into the reader, tear
    the connection down (every context: ConnectionLost) and lose the failed segment."""
    (tmp_path / "a").write_text("a file where context a's directory should be")
    a1, b1, b2 = audio_of("a", 0), audio_of("b", 0), audio_of("b", 1)
    script = [chunk("a", 1, a1), chunk("b", 1, b1), done("a"), chunk("b", 1, b2), done("b")]
    results, tts = run(run_script(script, writer=flushsink.FileWriter(tmp_path)))
    segments, failure = results["b"]
    assert failure is None and [received(s) for s in segments] == [b1 + b2]
    segments, failure = results["a"]
    assert isinstance(failure, WriteError) and failure.segment is not None
    assert received(failure.segment) == a1  # the caller can retry it


def test_a_write_error_fails_only_its_segment_sync_client(tmp_path):
    (tmp_path / "a").write_text("a file where context a's directory should be")
    a1, b1 = audio_of("a", 0), audio_of("b", 0)
    script = [chunk("a", 1, a1), chunk("b", 1, b1), done("a"), done("b")]
    with ScriptedServer(script, wait_for=2).running_in_thread() as server:
        with sync.connect(server.url, writer=flushsink.FileWriter(tmp_path),
                          receive_timeout=TIMEOUT) as tts:
            contexts = [tts.context(voice="v", context_id=cid) for cid in ("a", "b")]
            for ctx in contexts:
                ctx.push("x")
            with pytest.raises(WriteError) as failed:
                contexts[0].collect()
            kept = contexts[1].collect()
    assert received(failed.value.segment) == a1
    assert [received(s) for s in kept] == [b1] and kept[0].path.endswith("1.wav")


def _failing_writer(event):
    raise RuntimeError("a writer's own bug")


def test_a_writer_failing_otherwise_ends_the_connection_not_the_process():
    """A writer raising something else than WriteError (a bug) happens inside the
    connection's handling of a message: every context ends with ConnectionLost naming it,
    nothing that arrives after it is fed to the Sink, and the client closes the
    connection."""
    script = [chunk("a", 1, audio_of("a", 0)), done("a"), chunk("b", 1, audio_of("b", 0)),
              done("b")]
    results, tts = run(run_script(script, writer=_failing_writer))
    for cid in ("a", "b"):
        segments, failure = results[cid]
        assert isinstance(failure, ConnectionLost) and "a writer's own bug" in str(failure), failure
    # the Sink saw a's chunk and done; what came after on that connection was dropped
    assert tts.sink.stats.frames == 2 and tts.sink.stats.open_segments == 0


def test_a_writer_failing_otherwise_sync_client():
    script = [chunk("a", 1, audio_of("a", 0)), done("a"), chunk("b", 1, audio_of("b", 0)),
              done("b")]
    with ScriptedServer(script, wait_for=2).running_in_thread() as server:
        with sync.connect(server.url, writer=_failing_writer, receive_timeout=TIMEOUT) as tts:
            contexts = [tts.context(voice="v", context_id=cid) for cid in ("a", "b")]
            for ctx in contexts:
                ctx.push("x")
            for ctx in contexts:
                with pytest.raises(ConnectionLost, match="a writer's own bug"):
                    ctx.collect()
            deadline = time.monotonic() + TIMEOUT
            while tts._connected() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not tts._connected()  # closed by the client, not by the test
            assert tts.sink.stats.frames == 2 and tts.sink.stats.open_segments == 0


def test_a_write_error_during_a_drop_still_ends_every_context(tmp_path):
    """Regression: a writer failing inside connection_lost() used to escape the reader, so
    the contexts waited for receive_timeout and close() raised the WriteError."""
    (tmp_path / "file").write_text("not a directory")
    script = [chunk("a", 1, audio_of("a", 0)), chunk("b", 1, audio_of("b", 0)), ("abort",)]

    async def main():
        async with ScriptedServer(script, wait_for=2) as server:
            tts = flushsink.connect(server.url, receive_timeout=1,
                                    writer=flushsink.FileWriter(tmp_path / "file"))
            contexts = [tts.context(voice="v", context_id=cid) for cid in ("a", "b")]
            for ctx in contexts:
                await ctx.push("x")
            started = time.monotonic()
            results = await asyncio.gather(*(ctx.collect(timeout=1.0) for ctx in contexts),
                                           return_exceptions=True)
            took = time.monotonic() - started
            try:
                await tts.close()
            except WriteError as exc:  # the writer's error must not surface here either
                results.append(exc)
            return results, took

    results, took = run(main())
    assert all(isinstance(r, ConnectionLost) for r in results), results
    assert took < 0.9


# --- killed while writing ---------------------------------------------------------------------

# A fork server: a fresh single-threaded interpreter forks each writer, so no lock held by
# a thread of the test process (emulators, clients) can be inherited locked by a child.
FORK_SERVER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from flushsink import FileWriter
    from flushsink.formats import AudioFormat
    from flushsink.segments import Segment

    out = sys.argv[1]
    for line in sys.stdin:
        run_index = int(line)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # write until killed
            try:
                os.close(ready_r)
                writer = FileWriter(out)
                i = run_index * 1000
                while True:
                    i += 1
                    n = 100_000 + (i * 7919) % 200_000
                    samples = np.full(n, i % 30000, dtype="<i2")
                    samples[-1] = -1  # the last sample marks a whole file
                    writer.write(Segment("c", i % 3, AudioFormat("pcm_s16le", 16000), samples))
                    if ready_w is not None:
                        os.write(ready_w, b"x")
                        os.close(ready_w)
                        ready_w = None
            finally:
                os._exit(1)
        os.close(ready_w)
        os.read(ready_r, 1)  # the child's first file is in place
        os.close(ready_r)
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)
""")


def _parse_wav(data: bytes):
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    riff_size, = struct.unpack("<I", data[4:8])
    assert riff_size == len(data) - 8, "RIFF size does not match the file"
    assert data[36:40] == b"data"
    size, = struct.unpack("<I", data[40:44])
    assert size == len(data) - 44, "data size does not match the file"
    return np.frombuffer(data[44:], "<i2")


def _line(proc, timeout: float = TIMEOUT) -> str:
    import selectors
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"fork server silent: {proc.stderr.read() if proc.poll() else ''}"
    return proc.stdout.readline()


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_sigkill_while_finalizing_never_leaves_a_truncated_final_file(tmp_path):
    """At least 20 writers (0.2-0.6 MB files, overwriting the same names, as a client
    writing a context's flushes again would) killed at random moments; more, up to 200,
    until a kill has landed inside a write, so that the test cannot pass vacuously on a
    machine fast enough to finish every write before its kill."""
    import flushsink.writers
    out = tmp_path / "out"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(flushsink.writers.__file__)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p))
    proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rng = random.Random(4)
    leftovers = 0
    try:
        run_index = 0
        while run_index < 20 or (leftovers == 0 and run_index < 200):
            run_index += 1
            proc.stdin.write(f"{run_index}\n")
            proc.stdin.flush()
            pid = int(_line(proc))
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(pid, signal.SIGKILL)
            status = int(_line(proc))
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            for path in (out / "c").iterdir():
                if path.name.startswith("."):
                    assert path.name.endswith(".tmp")
                    leftovers += 1
                    path.unlink()  # a crash may leave the hidden temp file; nothing else
                    continue
                samples = _parse_wav(path.read_bytes())
                assert samples[-1] == -1 and len(samples) >= 100_000, path
                assert np.all(samples[:-1] == samples[0]), path
    finally:
        proc.stdin.close()
        proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()
    assert sorted(p.name for p in (out / "c").iterdir()) == ["0.wav", "1.wav", "2.wav"]
    assert leftovers >= 1  # the kills did land inside writes
