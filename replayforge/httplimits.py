"""
Bounds on what an HTTP client may make a listener hold: body size, header
size and count, and time.

A request is refused with a status and a one-line message, then the
connection is closed, so nothing beyond the bound is ever buffered:

 - 413 for a body over the limit, judged on C{Content-Length} before any byte
   of the body is read, on the running total of a chunked body, and, for a
   gzip body, on the size it inflates to (inflated incrementally, never past
   the limit and one byte);
 - 431 for too many header lines or too many header bytes, 414 for a request
   line that alone is too long;
 - 408 for a request whose head and body did not all arrive within the
   receive timeout, however steadily it trickles in (the idle timeout alone
   would be reset by every byte).
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

log = Logger()

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADER_COUNT = 200
DEFAULT_IDLE_TIMEOUT_SECONDS = 120.0
DEFAULT_RECEIVE_TIMEOUT_SECONDS = 300.0

GZIP_CODINGS = frozenset({b"gzip", b"x-gzip"})


def _refuse(channel: HTTPChannel, status: bytes, message: str) -> None:
    """
    Answer C{status} with C{message} and close, whatever was read so far.

    A client that does not read its answer is cut off after the channel's
    C{abortTimeout}, as a timed-out one would be.
    """
    transport = channel.transport
    if transport is None:
        return
    body = (message + "\n").encode("utf-8")
    transport.write(
        b"HTTP/1.1 %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(body), body)
    )
    transport.loseConnection()
    if channel.abortTimeout is not None and channel._abortingCall is None:
        channel._abortingCall = channel.callLater(
            channel.abortTimeout, channel.forceAbortClient
        )


class LimitedChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that bounds request heads and receive time.

    The limits are class attributes; L{replayforge.web.make_site} makes a
    subclass per site with its own values.
    """

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    max_header_count = DEFAULT_MAX_HEADER_COUNT
    receive_timeout: float | None = DEFAULT_RECEIVE_TIMEOUT_SECONDS

    _refused = False
    _deadline: Any = None
    _head_lines = 0

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        # Twisted's own checks answer a bare 400 or just close; ours come
        # first, with the same bounds, and say what went wrong.
        self.MAX_LENGTH = self.max_header_bytes
        self.totalHeadersSize = self.max_header_bytes
        self.maxHeaders = self.max_header_count

    def refuse(self, status: bytes, message: str) -> None:
        """Answer C{status} with C{message}, close, and read nothing more."""
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        _refuse(self, status, message)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if (
            self._deadline is None
            and not self._handlingRequest
            and self.receive_timeout is not None
        ):
            self._deadline = self.callLater(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                self.receive_timeout, self._receive_timed_out
            )
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        self._head_lines += 1
        if self._receivedHeaderSize + len(line) > self.max_header_bytes:
            self._refuse_head(line_alone=False)
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._handlingRequest:
            # Only request heads are read line by line: this cannot happen
            # while a request is handled, but closing is the safe answer.
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._refuse_head(line_alone=True)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.max_header_count:
            self.refuse(
                b"431 Request Header Fields Too Large",
                f"more than {self.max_header_count} header lines",
            )
            return False
        accepted: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return accepted

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        self._head_lines = 0
        super().allContentReceived()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _refuse_head(self, line_alone: bool) -> None:
        if line_alone and self._head_lines == 0:
            self.refuse(
                b"414 URI Too Long",
                f"request line over {self.max_header_bytes} bytes",
            )
            return
        self.refuse(
            b"431 Request Header Fields Too Large",
            f"request head over {self.max_header_bytes} bytes",
        )

    def _receive_timed_out(self) -> None:
        self._deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info(
            "closing a connection from {peer}: its request did not arrive "
            "within {timeout:g}s",
            peer=str(peer),
            timeout=self.receive_timeout,
        )
        self.refuse(
            b"408 Request Timeout",
            f"request not received within {self.receive_timeout:g} seconds",
        )

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()


class LimitedRequest(Request):
    """
    A request that refuses a body over C{max_body_bytes} with 413.

    The check runs on the announced C{Content-Length} before any byte of the
    body is read, and on the running total of a chunked body.  With
    C{decode_gzip}, a C{Content-Encoding: gzip} body is inflated as it
    arrives and the limit applies to the inflated bytes; the handler sees
    the inflated body, and headers that no longer claim an encoding.
    """

    max_body_bytes = DEFAULT_MAX_BODY_BYTES
    decode_gzip = False
    _received = 0
    _refused = False
    _inflater: Any = None
    _inflating = False

    def gotLength(self, length: int | None) -> None:
        if self.decode_gzip and self._gzip_encoded():
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if length is not None and length > self.max_body_bytes:
            self._refuse_oversized()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self._inflater is not None:
            self._inflating = True
            try:
                data = self._inflate(data)
            except zlib.error as error:
                self._refuse(b"400 Bad Request", f"invalid gzip body: {error}")
                return
        self._received += len(data)
        if self._received > self.max_body_bytes:
            self._refuse_oversized()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        if self._inflater is not None and self._inflating:
            if not self._inflater.eof:
                self._refuse(b"400 Bad Request", "invalid gzip body: it ends early")
                return
            self.requestHeaders.removeHeader(b"Content-Encoding")
            self.requestHeaders.setRawHeaders(
                b"Content-Length", [b"%d" % self._received]
            )
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _gzip_encoded(self) -> bool:
        codings = self.requestHeaders.getRawHeaders(b"Content-Encoding") or []
        return len(codings) == 1 and codings[0].strip().lower() in GZIP_CODINGS

    def _inflate(self, data: bytes) -> bytes:
        """
        Inflate C{data}, never producing more than one byte past the limit.

        Concatenated gzip members are inflated one after the other, as
        C{gzip -d} would.
        """
        room = self.max_body_bytes - self._received + 1
        pieces = []
        while data and room > 0:
            if self._inflater.eof:
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            piece = self._inflater.decompress(data, room)
            pieces.append(piece)
            room -= len(piece)
            data = self._inflater.unconsumed_tail or self._inflater.unused_data
        return b"".join(pieces)

    def _refuse_oversized(self) -> None:
        self._refuse(
            b"413 Content Too Large",
            f"request body over the limit of {self.max_body_bytes} bytes",
        )

    def _refuse(self, status: bytes, message: str) -> None:
        self._refused = True
        # Without this the channel would still invite the body with 100.
        self.requestHeaders.removeHeader(b"Expect")
        channel = self.channel
        if isinstance(channel, LimitedChannel):
            channel.refuse(status, message)
        elif channel is not None:
            _refuse(channel, status, message)
