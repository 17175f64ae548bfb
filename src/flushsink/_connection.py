"""What both clients need from websockets, whichever I/O they do: the typed errors of a
failed opening handshake, the URL and key checks, and :class:`DirectMessages`, the hook
that hands each parsed message to the client instead of to ``recv()``'s queue.

:mod:`flushsink.client` (asyncio) and :mod:`flushsink.sync` import this module and never
each other.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import socket
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Union

from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from websockets.frames import CloseCode, Opcode
from websockets.uri import parse_uri

from .errors import (
    AuthenticationError,
    ConfigError,
    FlushsinkError,
    HandshakeError,
    ConnectionRateLimited,
    SendTimeout,
)

__all__ = ["DirectMessages", "HANDSHAKE_FAILURES", "Retry", "as_retry", "check_url",
           "drop_message", "handshake_error", "resolve_key"]


def resolve_key(url: Optional[str], api_key: Optional[str], env: str = "CARTESIA_API_KEY",
                provider: str = "Cartesia") -> Optional[str]:
    """The API key to send: ``api_key``, else the environment variable ``env``;
    FlushsinkError when the provider itself (``url`` None) would get none."""
    api_key = api_key or os.environ.get(env) or None
    if url is None and api_key is None:
        raise FlushsinkError(
            f"no API key for {provider}: pass api_key= or set {env} "
            "(or pass url= of another server, e.g. flushsink's emulator)"
        )
    return api_key


def check_url(url: str) -> None:
    """ConfigError for a URL websockets cannot connect to."""
    try:
        parse_uri(url)
    except (InvalidURI, ValueError) as exc:  # ValueError: a port out of range
        raise ConfigError(f"bad url {_public(url)!r}: {exc}") from None


def _public(url: str) -> str:
    """The URL for messages: without its query, which may carry an API key."""
    return url.partition("?")[0]


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - Python < 3.10 returned None
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# What opening a connection can raise, besides flushsink's own errors and bugs.
HANDSHAKE_FAILURES = (WebSocketException, OSError, asyncio.TimeoutError)


def handshake_error(url: str, exc: BaseException, open_timeout: Optional[float]) -> HandshakeError:
    """The typed error for a failed opening handshake (raise it ``from exc``): HTTP 401
    and 403 are AuthenticationError, 429 ConnectionRateLimited (with Retry-After), any other
    status, a server that does not speak HTTP or websocket, TLS, a refused connection
    and the open timeout a HandshakeError whose status is None."""
    where = _public(url)
    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        retry_after = _retry_after(response.headers.get("Retry-After"))
        cls = (AuthenticationError if status in (401, 403)
               else ConnectionRateLimited if status == 429 else HandshakeError)
        detail = _one_line(bytes(response.body or b"").decode("utf-8", "replace")
                           or response.reason_phrase)
        message = f"{where} refused the websocket handshake with HTTP {status}"
        if detail:
            message += f": {detail}"
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        return cls(message, status=status, retry_after=retry_after)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        message = f"no websocket handshake with {where} within {open_timeout} s"
    elif isinstance(exc, ssl.SSLError):
        message = f"TLS with {where} failed (is it a wss:// server?): {exc}"
    elif isinstance(exc, WebSocketException):
        message = f"{where} did not answer as a websocket server: {exc}"
    else:
        detail = (exc.strerror or str(exc) or type(exc).__name__) if isinstance(
            exc, OSError) else repr(exc)
        message = f"cannot connect to {where}: {detail}"
        if where.startswith("wss://") and isinstance(exc, (ConnectionResetError, EOFError)):
            message += " (during the TLS handshake: does the server speak TLS?)"
    return HandshakeError(_one_line(message, 300))


@dataclass(frozen=True)
class Retry:
    """How ``connect()`` retries an opening handshake that failed for a reason that may
    pass: HTTP 429 (:class:`ConnectionRateLimited`), 408 or 5xx, a refused or reset
    connection, the open timeout. Never a bad key, a wrong URL (a host that does not
    resolve, a 404), a TLS failure or another 4xx.

    ``attempts`` handshakes in all, the first included. Before retry ``k`` (from 0) the
    client waits a random time between 0 and ``min(max_backoff, backoff * 2**k)`` ("full
    jitter", so that many clients refused together do not come back together), or,
    when the server sent ``Retry-After``, that long, unless it is more than
    ``max_backoff``: then the error is raised at once rather than retried early.

    Contexts are not retried: a context refused by the concurrency limit fails with
    :class:`ContextRateLimited`, as its input would have to be sent again.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"Retry.attempts must be an int >= 1, not {self.attempts!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 <= value < math.inf):
                raise ConfigError(f"Retry.{name} must be a number of seconds >= 0, not {value!r}")

    def delay(self, retries: int, error: HandshakeError, cause: BaseException) -> Optional[float]:
        """Seconds to wait before handshake ``retries + 2`` after ``error`` (raised
        from ``cause``), or None: raise it."""
        if retries + 1 >= self.attempts or not _transient(error, cause):
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_backoff else None
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** retries)
        return random.uniform(0.0, ceiling) if self.jitter else ceiling


def _transient(error: HandshakeError, cause: BaseException) -> bool:
    if error.status is not None:
        return error.status in (408, 429) or error.status >= 500
    # a host that does not resolve, or TLS that fails (a certificate), will again
    if isinstance(cause, (socket.gaierror, ssl.SSLError)):
        return False
    return isinstance(cause, (OSError, asyncio.TimeoutError, TimeoutError))


def as_retry(retry: Union[Retry, int, bool, None]) -> Optional[Retry]:
    """The client's ``retry`` option: a Retry, a number of attempts, True (the
    defaults), or None / False (one handshake, no retry)."""
    if retry is None or retry is False:
        return None
    if retry is True:
        return Retry()
    if isinstance(retry, Retry):
        return retry
    if isinstance(retry, int):
        return Retry(attempts=retry)
    raise ConfigError(f"retry must be a Retry, a number of attempts, True or None, not {retry!r}")


class DirectMessages:
    """Mixin for websockets' ``ClientConnection`` (asyncio or sync): every complete data
    message goes to ``on_message`` as soon as the protocol has parsed it, instead of into
    the queue ``recv()`` reads.

    That queue costs more per message than flushsink's own work: a frame object kept,
    a future and a task (or thread) wakeup for each ``recv()``, and read pauses when it
    fills (bench_e2e: 5.6 us per 20 ms message for ``recv()`` alone, 4.0 us this way).
    ``process_event`` is the hook websockets' own subclasses override (for the
    handshake). What still reaches ``recv()`` (a version of websockets that never calls
    the hook) is fed by the client's reader, so the speed may differ between versions,
    never the result.

    Fragmented messages are joined here, into one bytearray, and refused as ``recv()``
    refuses them: websockets' protocol closes with 1009 once a message passes
    ``max_size``, whatever its fragments; websockets 16+ also refuses a message of more
    than ``MAX_FRAGMENTS`` frames (4096, or ``WEBSOCKETS_MAX_FRAGMENTS``) with 1009 "too
    many fragments", and so does this, where the installed websockets has the limit.
    Memory stays within ``max_size`` however small the fragments: a list of them cost
    64 bytes per fragment (12 MB of 1-byte fragments: 764 MB).
    """

    response: Any
    on_message: Callable[[Any], None]
    send_timeout: Optional[float] = None
    # why flushsink closed the connection itself (e.g. a SendTimeout), for the contexts
    failure: Optional[BaseException] = None
    _fragments: Optional[bytearray] = None
    _fragment_count = 0
    _max_fragments = sys.maxsize  # set by the shells from websockets' own limit

    def process_event(self, event: Any) -> None:
        if self.response is not None:  # the handshake is done: frames
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    self.on_message(event.data)
                else:
                    self._fragments = bytearray(event.data)
                    self._fragment_count = 1
                return
            if opcode is Opcode.CONT:
                fragments = self._fragments
                if fragments is None:
                    return  # the rest of a refused message (the protocol refuses others)
                if self._fragment_count >= self._max_fragments:
                    self._fragments = None
                    self.on_message = drop_message  # as recv(): nothing more of this connection
                    self._refuse(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                    return
                fragments += event.data
                self._fragment_count += 1
                if event.fin:
                    self._fragments = None
                    self.on_message(fragments)
                return
        super().process_event(event)  # type: ignore[misc]

    def _refuse(self, code: int, reason: str) -> None:
        """Fail the connection with this close code, as websockets' recv() would."""
        raise NotImplementedError

    def _send_timed_out(self) -> SendTimeout:
        self.failure = SendTimeout(
            f"nothing could be sent for {self.send_timeout} s: the server stopped reading "
            "(the connection is closed)")
        return self.failure


def drop_message(message: Any) -> None:
    """What a connection's messages go to once handling one has failed."""
