"""Opening the connection fails with a typed error, in both clients: HTTP 401/403 is
AuthenticationError, 429 ConnectionRateLimited (a RateLimited) with the Retry-After it asked
for, any other status a HandshakeError with that status; a server that does not speak HTTP or websocket, wss:// to a
plain server, a refused connection and the open timeout a HandshakeError (status None) whose
message names the URL and whose __cause__ is what websockets or the OS raised. A URL that is
not ws:// or wss:// is a ConfigError (a ValueError) before anything is sent."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import struct
import time

import pytest
from websockets.exceptions import InvalidMessage, InvalidStatus

import flushsink
from flushsink import sync
from flushsink.emulator import Emulator
from flushsink.errors import (
    AuthenticationError,
    ConfigError,
    FlushsinkError,
    ConnectionRateLimited,
    HandshakeError,
    RateLimited,
)

from helpers.rawserver import RawServer, drain_until_closed, read_request, respond

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
CLIENTS = ["asyncio", "sync"]


def open_with(client: str, url: str, **options):
    """Open a connection with the client under test; return it (closed) or raise."""
    options.setdefault("open_timeout", 5)
    if client == "asyncio":
        async def main():
            tts = flushsink.connect(url, **options)
            try:
                await tts.connect()
            finally:
                await tts.close()

        asyncio.run(asyncio.wait_for(main(), 30))
    else:
        tts = sync.connect(url, **options)
        try:
            tts.connect()
        finally:
            tts.close()


def fails_with(client: str, url: str, cls=HandshakeError, **options) -> HandshakeError:
    with pytest.raises(cls) as info:
        open_with(client, url, **options)
    error = info.value
    assert type(error) is cls
    assert isinstance(error, FlushsinkError) and isinstance(error, ConnectionError)
    assert isinstance(error, RateLimited) == (error.status == 429)
    assert "\n" not in str(error)
    assert error.__cause__ is not None  # what websockets or the OS said is kept
    return error


@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_api_key_is_an_authentication_error(client):
    with Emulator(api_key="secret").running_in_thread() as emu:
        url = emu.url
        error = fails_with(client, url, AuthenticationError, api_key="wrong")
        open_with(client, url, api_key="secret")  # the right key still works
    assert error.status == 401 and error.retry_after is None
    assert isinstance(error.__cause__, InvalidStatus)
    assert url + "/tts/websocket" in str(error) and "401" in str(error)
    assert "wrong" not in str(error)  # the key itself is not repeated


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_from_any_server_are_authentication_errors(client, status):
    with RawServer(lambda conn: respond(conn, status, "Nope", body=b"bad key\n")) as server:
        error = fails_with(client, server.url, AuthenticationError)
    assert error.status == status and "bad key" in str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_path_is_a_handshake_error_with_its_status(client):
    with Emulator().running_in_thread() as emu:
        error = fails_with(client, emu.url + "/not/the/endpoint")
    assert error.status == 404 and "/not/the/endpoint" in str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_429_is_rate_limited_with_retry_after_in_seconds(client):
    def handler(conn):
        respond(conn, 429, "Too Many Requests", {"Retry-After": "7"}, b"slow down")

    with RawServer(handler) as server:
        error = fails_with(client, server.url, ConnectionRateLimited)
    assert error.status == 429 and error.retry_after == 7.0
    assert "retry after 7 s" in str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_429_with_an_http_date_and_without_retry_after(client):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with RawServer(lambda conn: respond(conn, 429, "Slow", {"Retry-After": when})) as server:
        error = fails_with(client, server.url, ConnectionRateLimited)
    assert 100 < error.retry_after <= 121
    with Emulator(reject_429=True, retry_after=None).running_in_thread() as emu:
        error = fails_with(client, emu.url, ConnectionRateLimited)
    assert error.status == 429 and error.retry_after is None
    with Emulator(reject_429=True).running_in_thread() as emu:  # its default: 1 s
        assert fails_with(client, emu.url, ConnectionRateLimited).retry_after == 1.0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_server_that_does_not_speak_http(client):
    def handler(conn):
        read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)  # and hangs up, as such a server would

    with RawServer(handler) as server:
        error = fails_with(client, server.url)
    assert error.status is None and isinstance(error.__cause__, InvalidMessage)
    assert server.url + "/tts/websocket" in str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_wss_to_a_plain_server(client):
    def handler(conn):  # a plain HTTP server: the TLS hello is not a request it knows
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with RawServer(handler) as server:
        url = server.url.replace("ws://", "wss://")
        error = fails_with(client, url)
    assert error.status is None and "wss://127.0.0.1" in str(error)
    assert isinstance(error.__cause__, OSError)  # ssl.SSLError or a reset
    # whatever the OS said (a reset says nothing), the message names the TLS failure
    assert "TLS" in str(error) and not str(error).endswith(": "), str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_wss_to_a_server_that_resets_says_so(client):
    def handler(conn):  # reads the TLS hello and drops the connection without a word
        conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with a zero linger: a reset

    with RawServer(handler) as server:
        error = fails_with(client, server.url.replace("ws://", "wss://"))
    assert error.status is None and "TLS" in str(error), str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_refused(client):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fails_with(client, f"ws://127.0.0.1:{port}")
    assert error.status is None and isinstance(error.__cause__, ConnectionRefusedError)
    assert f"127.0.0.1:{port}" in str(error)


@pytest.mark.parametrize("client", CLIENTS)
def test_open_timeout_is_a_handshake_error(client):
    with RawServer(lambda conn: drain_until_closed(conn, 5)) as server:  # never answers
        started = time.monotonic()
        error = fails_with(client, server.url, open_timeout=0.3)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert error.status is None and "0.3 s" in str(error)
    assert isinstance(error.__cause__, (TimeoutError, asyncio.TimeoutError))


@pytest.mark.parametrize("client", CLIENTS)
def test_query_is_left_out_of_messages(client):
    with RawServer(lambda conn: respond(conn, 500, "Oops")) as server:
        error = fails_with(client, server.url + "/tts/websocket?api_key=s3cret")
    assert error.status == 500 and "s3cret" not in str(error)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "127.0.0.1:9", "ws://", "wss://:x/",
                                 "ws://host:99999999/", "garbage"])
@pytest.mark.parametrize("client", CLIENTS)
def test_bad_urls_are_config_errors_at_connect(client, url):
    connect = flushsink.connect if client == "asyncio" else sync.connect
    with pytest.raises(ConfigError) as info:
        connect(url)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FlushsinkError)
