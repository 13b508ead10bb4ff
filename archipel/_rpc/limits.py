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
  more of that body is read.

uvicorn's h11 protocol is the one extended: the worker asks for it by class, so an installed
httptools does not replace it (and these limits) unnoticed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def limited_h11(request_timeout: float, max_header_bytes: int) -> type[H11Protocol]:
    """The protocol class for uvicorn's ``http=`` with these limits."""
    finished = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    def refusal(status: bytes, kind: str, message: str) -> bytes:
        body = b'{"error":{"kind":"%s","message":"%s"}}' % (kind.encode(), message.encode())
        return (
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d"
            b"\r\n\r\n%s" % (status, len(body), body)
        )

    timed_out = refusal(
        b"408 Request Timeout",
        "request_timeout",
        f"the request did not arrive whole within {request_timeout:g}s",
    )
    too_large = refusal(
        b"431 Request Header Fields Too Large", "headers_too_large", f"headers over {max_header_bytes} bytes"
    )
    ambiguous = refusal(b"400 Bad Request", "bad_request", "both content-length and transfer-encoding")

    class LimitedH11(H11Protocol):
        """uvicorn's h11 protocol with a deadline on receiving each request."""

        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # some bytes of a request arrived

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
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
                self.transport.close()
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
            self._disarm()
            self.transport.write(answer)
            self.transport.close()
            return True

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
