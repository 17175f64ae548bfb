"""A loopback TCP server that speaks as little HTTP and websocket as a test wants, for the
servers no websocket library would be: one that answers garbage or 429 with Retry-After,
never answers, stops reading, never answers a close, or sends a message as a million
continuation frames.

Each connection runs ``handler(sock)`` in a thread of its own, on plain blocking sockets,
so it serves the asyncio and the sync client alike. The server and its connections are
closed on exit; every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from typing import Callable, Optional

TIMEOUT = 10.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONT, CLOSE = 0x1, 0x2, 0x0, 0x8


class RawServer:
    """``with RawServer(handler) as server:`` ``server.url`` is ``ws://127.0.0.1:PORT``.

    ``rcvbuf`` sets SO_RCVBUF on the listening socket, before ``listen``, so accepted
    connections advertise a small window from their first segment on."""

    def __init__(self, handler: Callable[["socket.socket"], None], *,
                 rcvbuf: Optional[int] = None) -> None:
        self.handler = handler
        self.rcvbuf = rcvbuf
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "RawServer":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in list(self._threads):
            thread.join(TIMEOUT)
        self._listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the client went away, or the server is stopping
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def idle(self, seconds: float = TIMEOUT) -> None:
        """Wait until the server stops (or ``seconds`` pass)."""
        self.stopped.wait(seconds)


def read_request(conn: socket.socket) -> bytes:
    """The HTTP request head (up to the blank line)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(4096)
        if not piece:
            raise ConnectionError("the client closed before its request ended")
        data += piece
    return data


def accept_websocket(conn: socket.socket) -> bytes:
    """Read the upgrade request and answer 101; returns the request."""
    request = read_request(conn)
    key = b""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return request


def respond(conn: socket.socket, status: int, reason: str, headers: dict[str, str] = {},
            body: bytes = b"") -> None:
    """Read the request, answer with an HTTP response that is not an upgrade."""
    read_request(conn)
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    conn.sendall(head.encode("latin-1") + b"\r\n" + body)


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 2**16:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


def drain_until_closed(conn: socket.socket, deadline: float = TIMEOUT) -> bytes:
    """Read (and keep) what the client sends until it closes or the deadline passes;
    never answer anything, not even a close frame."""
    received = bytearray()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        conn.settimeout(max(0.01, min(0.2, end - time.monotonic())))
        try:
            piece = conn.recv(65536)
        except socket.timeout:
            continue
        if not piece:
            break
        received += piece
    return bytes(received)
