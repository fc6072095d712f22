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
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()  # a pipelined request may be half here already

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

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


def server_config(app, **kwargs) -> uvicorn.Config:
    """uvicorn's Config for `app` (from create_app) on the guarded protocol, its deadline from the app's options.

    kwargs go to uvicorn.Config (host, port, log_level, timeout_graceful_shutdown, ...)."""
    timeout = app.state.options.read_timeout
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout": timeout})
    return uvicorn.Config(app, http=protocol, **kwargs)
