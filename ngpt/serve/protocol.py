"""The HTTP/1.1 layer `ngpt serve` runs on: uvicorn's h11 protocol with a header deadline and JSON protocol errors.

    config = server_config(app, host="127.0.0.1", port=8000, log_level="info")   # what `ngpt serve` runs
    uvicorn.Server(config).run()

uvicorn already bounds a request's headers in size (h11: 16 KiB, then 431) and closes a keep-alive
connection left idle for `timeout_keep_alive` seconds, but it gives a client all the time it likes
to send the headers of a request: a few connections trickling a byte a second would hold their
sockets forever. Here:

- a request's headers must be complete within `read_timeout` seconds (the app's
  ServeOptions.read_timeout) of the connection opening or of the request's first byte: slower gets a
  408 and the connection is closed; a connection that never sends a byte is closed without a word,
  as an idle keep-alive connection is;
- the body has its own `read_timeout`, counted from the end of the headers (app.read_body: by then
  the request is ASGI's);
- a request h11 rejects (a malformed request line or header, no Host, a negative or non-numeric
  Content-Length, headers over 16 KiB) is answered in OpenAI's error shape, as JSON, instead of
  uvicorn's plain text.
- a connection closed while its request is still arriving (a 413 sent as soon as the headers declare
  too much, a 408, a 400 for bad HTTP) closes lingering, as nginx and Apache do: the answer is sent
  and our half of the socket shut, then what the client still sends is read and thrown away until
  it closes its half, goes quiet for LINGER_IDLE_S, or LINGER_MAX_S pass. Closing at once with
  bytes unread makes the kernel send a reset, and a client that writes its whole body before it
  reads (httpx, requests, curl all do) would get "connection reset" instead of the answer.

The pure-Python h11 protocol is always used, never httptools (when installed): these hooks are h11's.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import sys

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ngpt.serve.schemas import ApiError

log = logging.getLogger("ngpt.serve")

LINGER_IDLE_S = 2.0   # a lingering close ends when the client has sent nothing for this long...
LINGER_MAX_S = 10.0   # ...or after this long in all


def raw_error(status: int, message: str, code: str) -> bytes:
    """A whole HTTP response (closing the connection) holding an ApiError, for where no ASGI app answers."""
    body = json.dumps(ApiError(status, message, code=code).body(), ensure_ascii=True).encode("ascii")
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request's headers and JSON answers to bad HTTP."""

    read_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._socket = transport
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_ends = 0.0
        # uvicorn (and the code below) close the connection through self.transport: that close lingers.
        super().connection_made(LingeringTransport(transport, self))
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._arm_linger_timer()  # thrown away: the request was answered already
            return
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()  # a pipelined request may be half here already

    def connection_lost(self, exc: Exception | None) -> None:
        # A lingering close also ends here: when the client shuts its half, uvicorn's eof_received
        # returns None and asyncio closes the socket.
        self._stop_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.lingering:  # the server is stopping: no more waiting on this client
            self._socket.close()
        else:
            super().shutdown()

    # -- the lingering close ---------------------------------------------------------------------

    @property
    def lingering(self) -> bool:
        return self._linger_timer is not None

    def close_connection(self) -> None:
        """Close now when the request was read to its end; else linger (see the module docstring)."""
        if self.lingering or self._socket.is_closing():
            return
        unread = self.conn.their_state in (h11.SEND_BODY, h11.ERROR) or bool(self.conn.trailing_data[0])
        if not unread or not self._socket.can_write_eof():  # (TLS cannot half-close)
            self._socket.close()
            return
        self._stop_header_timer()
        self._socket.write_eof()  # sent after the answer still buffered: the client reads it, then EOF
        self._socket.resume_reading()  # uvicorn's flow control may have paused it for the unread body
        self._linger_ends = self.loop.time() + LINGER_MAX_S
        self._arm_linger_timer()

    def _arm_linger_timer(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        delay = min(LINGER_IDLE_S, self._linger_ends - self.loop.time())
        self._linger_timer = self.loop.call_later(max(delay, 0.0), self._socket.close)

    def _watch_headers(self) -> None:
        """Arm the deadline while h11 waits for a request's headers; disarm it once they are in."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.read_timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is cut off
            log.info("closing a connection from %s: its request headers took over %g s", self.client, self.read_timeout)
            self.transport.write(raw_error(
                408, f"The request's headers did not arrive within {self.read_timeout:g} s of its first byte; "
                     "send them in one go.", "request_timeout"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from its `except h11.RemoteProtocolError`, which is the exception in hand here.
        exc = sys.exc_info()[1]
        status = getattr(exc, "error_status_hint", 400)
        why = str(exc)[:200] if exc is not None else msg
        hint = ("the request line and headers must fit in 16 KiB" if status == 431 else
                "check the request line, the headers (HTTP/1.1 needs Host) and Content-Length (a non-negative "
                "integer matching the body)")
        self._stop_header_timer()
        if self.cycle is None or not self.cycle.response_started:  # else the client has its answer already
            self.transport.write(raw_error(status, f"The request is not valid HTTP/1.1 ({why}); {hint}.", "invalid_http"))
        self.transport.close()


class LingeringTransport:
    """The connection's transport as uvicorn's protocol code sees it: close() is the protocol's
    close_connection (which may linger), and while it lingers the transport reads as closing, so
    nothing more is written or started on it. Everything else is the socket's transport."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol):
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def server_config(app, **kwargs) -> uvicorn.Config:
    """uvicorn's Config for `app` (from create_app) on the guarded protocol, its deadline from the app's options.

    kwargs go to uvicorn.Config (host, port, log_level, timeout_graceful_shutdown, ...)."""
    timeout = app.state.options.read_timeout
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout": timeout})
    return uvicorn.Config(app, http=protocol, **kwargs)
