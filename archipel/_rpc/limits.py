"""uvicorn's h11 protocol with the limits a server facing hostile clients needs, which uvicorn
itself does not enforce (measured in tests/test_fuzz_http.py):

- a request line and headers larger than ``max_header_bytes`` are refused with 431 and the
  connection closed, however they arrive (h11's own limit only sees heads that arrive in pieces);
- a request with both ``content-length`` and ``transfer-encoding`` is refused with 400 and the
  connection closed (RFC 9112 6.1: a way to smuggle a second request past a proxy);
- a request must arrive whole, headers and body, within ``request_timeout`` seconds of its first
  byte or of the connection opening: a client that trickles one gets 408 and is cut off, one that
  never sends a byte is cut off (slowloris). The app's own time is not counted: deadlines bound it;
- a response given before the request's body was read (413, 401...) closes the connection, so no
  more of that body is read; in stages (the answer, a FIN, what still arrives dropped, the close),
  so that the client gets the answer rather than a reset.

Both of uvicorn's protocols are extended, with the same limits and the same answers:
``limited_httptools`` (the worker's, the faster: docs/decisions/0010-http-stack.md) and
``limited_h11``. The worker asks for its protocol by class, so uvicorn's own choice of protocol
(and none of these limits) never applies unnoticed.
"""

from __future__ import annotations

import asyncio
import json

import h11
import httptools
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def refusal(status: bytes, kind: str, message: str) -> bytes:
    """A whole response refusing a request, in the JSON error shape of ``RpcServer``'s answers."""
    body = json.dumps({"error": {"kind": kind, "message": message}}, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d"
        b"\r\n\r\n%s" % (status, len(body), body)
    )


LINGER = 2.0  # seconds a refused client's further bytes are read and dropped before the close


def close_after_answer(transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop) -> None:
    """Close a connection whose client may still be sending (a body or a head refused) so that
    the answer reaches it. A plain close with unread bytes makes the kernel send a reset, which
    can destroy the answer before the client has read it (RFC 9112, 9.6: close in stages). So:
    send the answer and a FIN, drop whatever still arrives, close when the client does or after
    ``LINGER`` seconds."""
    assert isinstance(transport, asyncio.Transport)
    if transport.is_closing():
        return
    if not transport.can_write_eof():  # TLS cannot half-close
        transport.close()
        return
    transport.write_eof()
    transport.resume_reading()  # the protocol drops what arrives; the kernel's buffer must not fill
    loop.call_later(LINGER, transport.close)


def _timed_out(request_timeout: float) -> bytes:
    message = f"the request did not arrive whole within {request_timeout:g}s"
    return refusal(b"408 Request Timeout", "request_timeout", message)


def _too_large(max_header_bytes: int) -> bytes:
    message = f"headers over {max_header_bytes} bytes"
    return refusal(b"431 Request Header Fields Too Large", "headers_too_large", message)


AMBIGUOUS = refusal(b"400 Bad Request", "bad_request", "both content-length and transfer-encoding")


def limited_h11(request_timeout: float, max_header_bytes: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, for uvicorn's ``http=``, with these limits."""
    finished = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
    timed_out, too_large, ambiguous = _timed_out(request_timeout), _too_large(max_header_bytes), AMBIGUOUS

    class LimitedH11(H11Protocol):
        """uvicorn's h11 protocol with a deadline on receiving each request."""

        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # some bytes of a request arrived
        _stopped = False  # refused: whatever else arrives is dropped

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._stopped:
                return
            self._partial = True
            self._arm()
            if self.conn.their_state is h11.IDLE and self._refused(self.conn.trailing_data[0] + data):
                return
            super().data_received(data)
            if self.conn.their_state in finished:
                self._disarm()

        def on_response_complete(self) -> None:
            unread = self.conn.their_state is h11.SEND_BODY
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if unread:  # answered before its body was read: read no more of it
                self._stop()
                return
            if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                self._partial = False
                self._disarm()  # idle between requests: the keep-alive timeout applies
            elif self.conn.their_state not in finished:
                self._arm()  # a pipelined request is on its way

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _refused(self, buffered: bytes) -> bool:
            """Refuse a request head that is too large or ambiguous (``buffered``: what has
            arrived of it); whether it was."""
            end = buffered.find(b"\r\n\r\n")
            if (end + 4 if end >= 0 else len(buffered)) > max_header_bytes:
                answer = too_large
            elif end >= 0 and {b"content-length", b"transfer-encoding"} <= {
                line.split(b":", 1)[0].strip().lower() for line in buffered[:end].split(b"\r\n")[1:]
            }:
                answer = ambiguous
            else:
                return False
            self.transport.write(answer)
            self._stop()
            return True

        def _stop(self) -> None:
            self._disarm()
            self._stopped = True
            close_after_answer(self.transport, self.loop)

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state in finished:
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app reading the body gets http.disconnect
                cycle.message_event.set()
            if self._partial and (cycle is None or not cycle.response_started):
                self.transport.write(timed_out)
            self.transport.close()

    return LimitedH11


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that is refused."""


def limited_httptools(request_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class, for uvicorn's ``http=``, with the limits of
    ``limited_h11`` and the same answers.

    httptools (llhttp) parses whole chunks and has no limit on a head's size: the head is counted
    from the parser's callbacks when it completes, and, while it is still arriving, from the bytes
    received of it (of a head that began after a pipelined request within a chunk, what was
    parsed of that chunk; so a head is never refused below the limit, and is refused at most one
    read, 256 KiB, above it). A malformed request gets a 400 in the same JSON shape; one that
    follows a request still being answered closes the connection after that answer instead, so
    no answer is written over another.
    """
    timed_out, too_large = _timed_out(request_timeout), _too_large(max_header_bytes)

    class LimitedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline on receiving each request and a bound on
        its head."""

        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # some bytes of a request arrived
        _reading = False  # a request has begun and has not arrived whole
        _head: int | None = None  # bytes of the head being parsed; None once it is complete
        _received = 0  # bytes received since the head being parsed began (a bound, see above)
        _arrived = 0  # requests that arrived whole
        _refusal: bytes | None = None  # the answer of a request a callback refused
        _stopped = False  # refused: whatever else arrives is not read

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._stopped:
                return
            self._unset_keepalive_if_required()
            self._partial = True
            self._arm()
            in_head, arrived = self._head is not None, self._arrived
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError as error:
                self._refuse(self._refusal or self._malformed(error))
                return
            if self._head is not None:  # a head still arriving: count the bytes received of it
                if self._arrived == arrived:  # it continues, or began with this chunk: all of it
                    self._received = (self._received if in_head else 0) + len(data)
                else:  # it began after a request within this chunk: what was parsed of it
                    self._received = self._head
                if self._received > max_header_bytes:
                    self._refuse(too_large)
                    return
            if not self._reading:
                self._disarm()  # arrived whole: the app's time is bounded by deadlines, not here

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading, self._head, self._received = True, 0, 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._count(len(name) + len(value) + 4)  # ": ", CRLF

        def on_headers_complete(self) -> None:
            # The request line's method, spaces, version and CRLF, and the blank line.
            self._count(len(self.parser.get_method()) + 14)
            self._head = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._reading = False
            self._arrived += 1
            super().on_message_complete()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            unread = cycle is not None and cycle.response_complete and cycle.more_body
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if unread:  # answered before its body was read: read no more of it
                self._disarm()
                self._stopped = True
                close_after_answer(self.transport, self.loop)
                return
            if self._reading:
                self._arm()  # a pipelined request is on its way
            else:
                self._partial = False
                self._disarm()  # idle between requests: the keep-alive timeout applies

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _count(self, size: int) -> None:
            if self._head is not None:
                self._head += size
                if self._head > max_header_bytes:
                    self._refusal = too_large
                    raise _Refused  # httptools stops parsing: data_received refuses the request

        def _malformed(self, error: Exception) -> bytes:
            reason = str(error)
            if "Content-Length" in reason and "Transfer-Encoding" in reason:
                return AMBIGUOUS  # llhttp's own refusal of both: the same answer as h11's
            return refusal(b"400 Bad Request", "bad_request", f"malformed HTTP request: {reason}")

        def _refuse(self, answer: bytes) -> None:
            self._disarm()
            self._stopped = True
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if not cycle.more_body:  # the request being answered arrived whole: answer it, then close
                    cycle.keep_alive = False
                    self.flow.pause_reading()
                    return
                cycle.disconnected = True  # the app reading the body gets http.disconnect
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
            self.transport.write(answer)
            close_after_answer(self.transport, self.loop)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            cycle = self.cycle
            answering = cycle is not None and not cycle.response_complete and not cycle.more_body
            if self.transport.is_closing() or (answering and not self._reading):
                return
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app reading the body gets http.disconnect
                cycle.message_event.set()
            if self._partial and (cycle is None or cycle.response_complete or not cycle.response_started):
                self.transport.write(timed_out)
            self.transport.close()

    return LimitedHttpTools
