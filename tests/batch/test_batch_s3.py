"""flushsink.batch.S3Store against an S3 server the tests start on 127.0.0.1 (moto's
ThreadedMotoServer, port 0) through obstore, configured only by the standard AWS
environment variables. moto 5.2.5 honours ``If-None-Match: *``: a second create-only put
gets 412 Precondition Failed, which obstore reports as AlreadyExistsError, so these tests
check the refusal for real. Skipped where obstore or moto is missing (make test-batch
installs both)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading

import numpy as np
import pytest

from flushsink import Segment
from flushsink.batch import (
    ERRORS_DIR,
    MANIFEST_DIR,
    MissingDependency,
    ObjectInfo,
    ObjectNotFound,
    PartWriter,
    Row,
    S3Store,
    StoreError,
    UnsafePath,
    open_store,
    reconcile,
    resume_state,
    safe_id,
    store_segment,
    summarize,
    write_summary,
)
from flushsink.emulator import render
from flushsink.formats import AudioFormat

HAVE_OBSTORE = importlib.util.find_spec("obstore") is not None
VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"


@pytest.mark.skipif(HAVE_OBSTORE, reason="obstore is installed")
def test_s3_without_obstore_names_the_extra():
    with pytest.raises(MissingDependency, match=r"flushsink\[s3\]"):
        open_store("s3://bucket/prefix")


@pytest.fixture
def s3_server(s3_endpoint):
    """The endpoint of the S3 server the batch tests share (conftest.py)."""
    return s3_endpoint


@pytest.fixture
def bucket(make_bucket):
    """A new bucket, and the environment a user would set for the endpoint."""
    return make_bucket("flushsink")


def raw_client(s3_server):
    """boto3 (moto's own dependency): an independent client to look at the bucket with."""
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def raw_keys(s3_server, bucket):
    listing = raw_client(s3_server).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def raw_get(s3_server, bucket, key):
    return raw_client(s3_server).get_object(Bucket=bucket, Key=key)["Body"].read()


def test_put_if_absent_is_refused_by_the_server_the_second_time(s3_server, bucket):
    store = open_store(f"s3://{bucket}/jobs/one")
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/jobs/one"
    assert store.put_if_absent("audio/a/0.wav", b"first") is True
    assert store.put_if_absent("audio/a/0.wav", b"second") is False
    assert store.get("audio/a/0.wav") == b"first"
    assert raw_get(s3_server, bucket, "jobs/one/audio/a/0.wav") == b"first"
    assert raw_keys(s3_server, bucket) == ["jobs/one/audio/a/0.wav"]


def test_the_server_refuses_only_conditional_puts(s3_server, bucket):
    """What the refusal above rests on: this server answers a PUT with ``If-None-Match: *``
    over an existing key with 412 and lets a plain PUT replace it (Store.put)."""
    store = S3Store(bucket)
    assert store.put_if_absent("k", b"1")
    client = raw_client(s3_server)
    with pytest.raises(client.exceptions.ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert store.get("k") == b"1"
    store.put("k", b"3")
    assert store.get("k") == b"3"


def test_large_objects_go_in_one_conditional_put(bucket):
    store = S3Store(bucket)
    data = bytes(range(256)) * (7 * 1024 * 1024 // 256)  # over obstore's 5 MiB multipart size
    assert store.put_if_absent("big.wav", data) is True
    assert store.put_if_absent("big.wav", b"x") is False
    assert store.get("big.wav") == data


def test_racing_writers(bucket):
    """Six processes' worth of create-only puts at once on one key. S3 lets exactly one
    succeed; moto 5.2.5 checks If-None-Match and then stores in two steps without a lock
    (moto/s3/responses.py put_object), so two racing puts can both pass there. What holds
    on both: no put fails outright, at least one wins, and the object is one writer's
    whole data. (The local store's race test asserts exactly one winner.)"""
    store = S3Store(bucket)
    barrier = threading.Barrier(6)
    results = {}

    def put(i):
        barrier.wait()
        results[i] = store.put_if_absent("race.wav", b"%d" % i * 1000)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, stored in results.items() if stored]
    assert len(results) == 6 and winners
    assert store.get("race.wav") in [b"%d" % i * 1000 for i in winners]
    assert store.put_if_absent("race.wav", b"late") is False


def test_list_get_and_the_prefix_fence(s3_server, bucket):
    one, two = S3Store(bucket, "job/a"), S3Store(bucket, "/job/b/")
    for path in ("audio/x/0.wav", "audio/x/1.wav", "audiobook/y", "manifest/part-0of1-000000.jsonl"):
        one.put_if_absent(path, b"abc")
    two.put_if_absent("audio/z/0.wav", b"z")
    assert list(one.list("audio")) == [ObjectInfo("audio/x/0.wav", 3),
                                       ObjectInfo("audio/x/1.wav", 3)]
    assert [o.path for o in one.list()] == ["audio/x/0.wav", "audio/x/1.wav", "audiobook/y",
                                            "manifest/part-0of1-000000.jsonl"]
    assert [o.path for o in two.list()] == ["audio/z/0.wav"]
    with pytest.raises(ObjectNotFound) as info:
        one.get("audio/z/0.wav")
    assert isinstance(info.value, FileNotFoundError)
    for bad in ("../b/audio/z/0.wav", "/abs", "a//b", ".hidden", "a\\b"):
        with pytest.raises(UnsafePath):
            one.put_if_absent(bad, b"x")
    for row_id in ("../../escape", "..", "/etc/passwd", "a/../../b"):
        one.put_if_absent(f"audio/{safe_id(row_id)}/0.wav", b"x")
    assert all(key.startswith(("job/a/audio/", "job/a/audiobook/", "job/a/manifest/",
                               "job/b/audio/"))
               for key in raw_keys(s3_server, bucket))
    assert len(raw_keys(s3_server, bucket)) == 9


def test_async_forms(bucket):
    store = S3Store(bucket, "p")

    async def main():
        assert await store.put_if_absent_async("a", b"1") is True
        assert await store.put_if_absent_async("a", b"2") is False
        assert await store.get_async("a") == b"1"
        assert await store.list_async() == [ObjectInfo("a", 1)]
        with pytest.raises(ObjectNotFound):
            await store.get_async("b")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_region_from_aws_default_region(bucket, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store(bucket)
    assert store.put_if_absent("r", b"1") and store.get("r") == b"1"


def test_http_endpoint_refused_when_aws_allow_http_says_false(bucket, monkeypatch):
    monkeypatch.setenv("AWS_ALLOW_HTTP", "false")
    store = S3Store(bucket)
    with pytest.raises(StoreError) as info:
        store.put_if_absent("x", b"1")
    assert isinstance(info.value, OSError) and info.value.path == "x"


def test_a_job_on_s3_resumes_and_summarizes(bucket):
    """Audio and manifest on S3: a killed run's orphans are reconciled from the stored
    WAVs, the summary counts every part."""
    fmt = AudioFormat("pcm_s16le", 16000)
    store = S3Store(bucket, "dataset/v1")

    def segment_of(text):
        return Segment("c", 0, fmt, np.frombuffer(render(text, VOICE, fmt), fmt.dtype).copy())

    rows = [Row(f"r{i}", (f"Row {i}.", "Done."), i, voice=VOICE) for i in range(4)]
    manifest = PartWriter(store, MANIFEST_DIR, every_rows=100)
    for row in rows[:2]:
        manifest.add([store_segment(store, row, f, segment_of(t)) for f, t in enumerate(row.texts)])
    manifest.close()
    for f, t in enumerate(rows[2].texts):  # stored, then killed before its rows went out
        store_segment(store, rows[2], f, segment_of(t))
    state = resume_state(store)
    assert state.done == {"r0", "r1"} and list(state.orphans) == ["r2"]
    manifest = PartWriter(store, MANIFEST_DIR)
    assert manifest.next_number == 1
    manifest.add(reconcile(store, rows[2], state))
    manifest.add([store_segment(store, rows[3], f, segment_of(t))
                  for f, t in enumerate(rows[3].texts)])
    manifest.close()
    errors = PartWriter(store, ERRORS_DIR)
    errors.add([{"kind": "input", "id": None, "index": 9, "line": 10, "reason": "missing id",
                 "source": None}])
    errors.close()
    summary = summarize(store)
    assert (summary["rows"], summary["files"], summary["manifest_parts"],
            summary["error_rows"]) == (4, 8, 2, {"input": 1})
    write_summary(store, summary)
    assert json.loads(store.get("summary.json"))["rows"] == 4
    assert resume_state(store).orphans == {}
