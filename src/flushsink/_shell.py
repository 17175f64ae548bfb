"""What the asyncio and sync clients share on the state side of the shell: the options,
the :class:`~flushsink.session.Session`, the contexts, and which client holds each Sink.

:mod:`flushsink.client` (asyncio) and :mod:`flushsink.sync` import this module and never
each other.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from ._accel import Sink
from ._connection import check_url, resolve_key
from .errors import ConfigError, ConnectionLost, FlushsinkError, SendTimeout
from .formats import DEFAULT_FORMAT
from .session import DEFAULT_VERSION, ContextState, Session, _End, auth_headers, normalize_url

__all__ = ["ClientBase"]


# Which client uses each Sink: Session.connection_lost closes the sink, which ends every
# context in it, so two open clients on one Sink would end each other's contexts. Weak
# both ways: a sink or client that is gone frees its entry.
_sink_users: "weakref.WeakKeyDictionary[Any, weakref.ReferenceType[Any]]" = (
    weakref.WeakKeyDictionary())
_sink_users_lock = threading.Lock()


class ClientBase:
    """Options, the Session and the contexts: what the asyncio and sync clients share.

    Options (all keyword-only): ``version``, ``writer``, ``sink``, ``receive_timeout``
    (longest silence of a context), ``open_timeout`` (handshake), ``send_timeout``
    (longest wait to hand a message to the socket), ``close_timeout`` (``close()``;
    default ``open_timeout``), ``max_size``, ``compression``, ``additional_headers``.
    A ``sink`` may serve one open client at a time (ConfigError otherwise).
    """

    _context_class: Any = None

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *,
                 version: str = DEFAULT_VERSION, writer: Any = None, sink: Optional[Sink] = None,
                 receive_timeout: float = 60.0, open_timeout: float = 10.0,
                 send_timeout: Optional[float] = 10.0, close_timeout: Optional[float] = None,
                 max_size: Optional[int] = 16 * 2**20, compression: Optional[str] = None,
                 additional_headers: Optional[dict[str, str]] = None) -> None:
        self.api_key = resolve_key(url, api_key)
        self.url = normalize_url(url)
        check_url(self.url)
        self.version = version
        self.receive_timeout = receive_timeout
        self.open_timeout = open_timeout
        self.send_timeout = send_timeout
        # close() returns within this (websockets' default would be 10 s whatever
        # open_timeout said, which the docs promised bounded closing too)
        self.close_timeout = open_timeout if close_timeout is None else close_timeout
        self.max_size = max_size
        # permessage-deflate costs 3-14x client CPU for ~23% fewer bytes: off by default
        self.compression = compression
        self.headers = {**auth_headers(self.api_key, version), **(additional_headers or {})}
        sink = sink if sink is not None else Sink(DEFAULT_FORMAT)
        self._claim(sink)
        self._session = Session(sink, self._deliver, writer)
        self._contexts: dict[str, Any] = {}
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.connections = 0

    @property
    def sink(self) -> Sink:
        return self._session.sink

    def _claim(self, sink: Any) -> None:
        """Take ``sink`` for this client, or raise ConfigError if another open client
        has it. Called when the client is made and when it (re)connects."""
        with _sink_users_lock:
            try:
                ref = _sink_users.get(sink)
            except TypeError:  # pragma: no cover - a sink without weak references
                return
            user = ref() if ref is not None else None
            if user is not None and user is not self:
                raise ConfigError(
                    "this Sink is already used by another client that is not closed: a "
                    "closing connection ends every context of its Sink, so each open client "
                    "needs a Sink of its own (close the other client first)")
            if user is None:
                _sink_users[sink] = weakref.ref(self)

    def _release(self) -> None:
        """A closed client leaves its Sink to others."""
        sink = self._session.sink
        with _sink_users_lock:
            try:
                ref = _sink_users.get(sink)
            except TypeError:  # pragma: no cover
                return
            if ref is not None and ref() is self:
                del _sink_users[sink]

    @property
    def session(self) -> Session:
        return self._session

    def _new_context(self, model_id: str, voice: Any, output_format: Optional[dict[str, Any]],
                     context_id: Optional[str], defaults: dict[str, Any]) -> Any:
        state = self._session.new_context(model_id=model_id, voice=voice,
                                          output_format=output_format, context_id=context_id,
                                          **defaults)
        ctx = self._context_class(self, state)
        self._contexts[state.context_id] = ctx
        return ctx

    def _deliver(self, state: ContextState, event: Any) -> None:
        ctx = self._contexts.get(state.context_id)
        if ctx is not None:
            ctx._queue.put_nowait(event)
            if isinstance(event, _End):
                del self._contexts[state.context_id]

    def _closed(self, exc: ConnectionClosed, ws: Any) -> str:
        # the close frame of the side that closed first (the server's, or ours: e.g.
        # 1009 for a frame over max_size, 1000 for close()), else none at all: the TCP
        # connection dropped
        close: Optional[Close]
        if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
            close, side = exc.rcvd, "the server"
        else:
            close, side = exc.sent, "flushsink"
        self.close_code = close.code if close else None
        self.close_reason = close.reason if close else None
        if ws.failure is not None:
            return f"closed by flushsink: {ws.failure}"
        if close is None:
            return "connection dropped without a close frame"
        reason = f" ({close.reason})" if close.reason else ""
        return f"connection closed by {side} with code {close.code}{reason}"

    @staticmethod
    def _send_failed(exc: ConnectionClosed, ws: Any) -> FlushsinkError:
        """What a send that found the connection closed raises."""
        if isinstance(ws.failure, SendTimeout):
            return SendTimeout(str(ws.failure))
        return ConnectionLost(f"connection closed while sending: {exc}")
