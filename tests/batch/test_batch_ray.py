"""``flushsink.batch.ray.run`` (``flushsink[ray]``) on a local Ray cluster bound to 127.0.0.1,
against the Cartesia emulator in this process with a concurrency limit (so 429s happen):
200 rows over 2 actors, every WAV read back with soundfile equal to the renderer's, the
manifest loaded with ``datasets``, no (id, flush) twice across parts; a run on half the
input then on all of it (the first half skipped, not synthesized again); an actor killed
with SIGKILL mid-run (Ray restarts it and retries its batches: nothing stored or
published twice); audio whose manifest part was lost, reconciled by ``flushsink batch
--ray``. One cluster for the module: Ray's start costs seconds on two cores.

Skipped where ray is missing (make test-batch installs it)."""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import pytest

# Ray reads these when it is imported: a cluster on this machine only (every server binds
# 127.0.0.1, not every interface), and no usage report sent anywhere.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
datasets = pytest.importorskip("datasets")

from flushsink import cli  # noqa: E402
from flushsink.batch import MANIFEST_DIR, LocalStore, summarize  # noqa: E402
from flushsink.batch import ray as batch_ray  # noqa: E402
from flushsink.formats import AudioFormat  # noqa: E402

pytestmark = pytest.mark.slow

FMT = AudioFormat("pcm_s16le", 8000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False, object_store_memory=200 * 2**20)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _listening(pids: set[int]) -> list[str]:
    """The local addresses of every TCP socket in LISTEN that ``pids`` hold."""
    inodes = set()
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    addresses.append(fields[1])
    return addresses


def _is_loopback(address: str) -> bool:
    host = address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian hex: 127.x.x.x ends in 7F
        return host.endswith("7F")
    # IPv6: ::1, or ::ffff:127.x.x.x (an IPv4-mapped address)
    return host == "00000000000000000000000001000000" or (
        host.startswith("0000000000000000FFFF0000") and host.endswith("7F"))


def _manifest(dest: str) -> list[dict]:
    store = LocalStore(dest)
    return [json.loads(line) for info in store.list(MANIFEST_DIR)
            for line in store.get(info.path).splitlines() if line.strip()]


def _load(dest: str, monkeypatch, tmp_path) -> "datasets.Dataset":
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    files = sorted(glob.glob(os.path.join(dest, MANIFEST_DIR, "*.jsonl")))
    return datasets.load_dataset("json", data_files=files, split="train")


def test_200_rows_on_two_actors_exactly_once_with_429s_then_the_rest(
        cluster, tmp_path, emulator, write_rows, verify, monkeypatch):
    emu = emulator(concurrency_limit=3)
    source, expected = write_rows(200)
    lines = open(source, encoding="utf-8").read().splitlines(keepends=True)
    half = tmp_path / "half.jsonl"
    half.write_text("".join(lines[:100]), encoding="utf-8")  # rows 0-99, no bad row
    dest = str(tmp_path / "out")
    options = dict(url=emu.url, num_actors=2, concurrency_per_actor=4, batch_size=8,
                   output_format=FMT, backoff=0.02, part_rows=50)

    first = batch_ray.run(str(half), dest, **options)
    assert first["job"]["rows_stored"] == 100 and first["job"]["complete"]
    # every Ray server of this cluster (and the emulator) listens on loopback only
    addresses = _listening(_descendants(os.getpid()) | {os.getpid()})
    assert addresses and all(_is_loopback(a) for a in addresses), addresses

    summary = batch_ray.run(source, dest, **options)
    job = summary["job"]
    assert job["rows_skipped"] == 100 and job["rows_stored"] == 100
    assert job["rows_failed"] == 0 and job["bad_rows"] == 3 and job["complete"]
    # two actors at 4 each against a limit of 3: the server refused, the actors cut
    assert job["rate_limited"]["context"] > 0 and job["concurrency_cuts"] >= 1
    assert summary["rows"] == 200 and summary["duplicate_files"] == 0
    assert summary["ray"]["num_actors"] == 2
    verify(dest, expected)  # exactly once, every sample the renderer's, read with soundfile
    table = _load(dest, monkeypatch, tmp_path)
    assert table.num_rows == sum(len(texts) for texts in expected.values())
    keys = list(zip(table["id"], table["flush"]))
    assert len(set(keys)) == len(keys)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == 200


def _kill_an_actor_when(dest: str, at_least: int, killed: list[int], deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if len(glob.glob(os.path.join(dest, "audio", "*", "*.wav"))) >= at_least:
            for pid in sorted(_descendants(os.getpid())):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as file:
                        title = file.read()
                except OSError:
                    continue
                if b"_SynthesizeRows" in title:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.02)


def test_an_actor_killed_mid_run_and_lost_manifest_parts(cluster, tmp_path, emulator,
                                                         write_rows, verify):
    # paced, so that the run lasts long enough for the kill to land inside it
    emu = emulator(concurrency_limit=6, pace=40.0)
    source, expected = write_rows(120, bad=False)
    dest = str(tmp_path / "out")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_an_actor_when, args=(dest, 30, killed, 60.0))
    killer.start()
    try:
        summary = batch_ray.run(source, dest, url=emu.url, num_actors=2,
                                concurrency_per_actor=3, batch_size=4, output_format=FMT,
                                backoff=0.02, part_rows=10)
    finally:
        killer.join()
    assert killed, "no actor was found to kill"
    # Ray restarted the actor and retried its batches: the job still ends with every row
    # once (the retried rows' stored audio kept, create-only)
    assert summary["job"]["complete"] and summary["job"]["rows_failed"] == 0
    assert summary["rows"] == 120 and summary["duplicate_files"] == 0
    verify(dest, expected)

    # a driver killed after the actors stored audio and before it published: lose two
    # manifest parts, then `flushsink batch --ray` on the running cluster reconciles
    # their rows from the stored audio, without asking the server again
    parts = sorted(glob.glob(os.path.join(dest, MANIFEST_DIR, "*.jsonl")))
    lost = {json.loads(line)["id"] for part in parts[:2] for line in open(part)}
    for part in parts[:2]:
        os.unlink(part)
    chunks_before = emu.stats.chunks_sent
    code = cli.main(["batch", source, "--out", dest, "--url", emu.url, "--ray",
                     "--sample-rate", "8000", "--quiet"])
    assert code == 0
    assert emu.stats.chunks_sent == chunks_before  # nothing synthesized again
    again = summarize(LocalStore(dest))
    assert again["rows"] == 120 and again["duplicate_files"] == 0
    assert {r["id"] for r in _manifest(dest)} >= lost
    verify(dest, expected)
