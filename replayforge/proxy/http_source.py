"""
The proxy's C{http} source: every request to its listener becomes an event.

Any method and any path are captured as a call object.  The client gets its
answer only once the events it caused are committed to the sink buffers:
200 when they are, 503 with C{Retry-After} when a buffer is full, 413 when an
event is larger than its sink's C{maxPayloadBytes} (nothing stored: the relay
request could never carry it).
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from replayforge import callobject
from replayforge.proxy.buffer import BufferFull
from replayforge.proxy.pipeline import PayloadTooLarge, SourcePipeline

log = Logger()

RETRY_AFTER_SECONDS = 5


class CaptureResource(Resource):
    """A leaf resource that turns every request into an event."""

    isLeaf = True

    def __init__(self, pipeline: SourcePipeline) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._pipeline = pipeline

    def render(self, request: Request) -> int:
        body = request.content.read() if request.content is not None else b""
        content = callobject.encode(callobject.capture(request, body))
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(code: int, message: bytes, retry: bool = False) -> None:
            if gone:
                return
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            if retry:
                request.setHeader(b"Retry-After", b"%d" % RETRY_AFTER_SECONDS)
            request.write(message)
            request.finish()

        def stored(count: int) -> None:
            answer(200, b"Request received")

        def failed(failure: Failure) -> None:
            if failure.check(BufferFull):
                answer(503, b"Server busy, try again later", retry=True)
                return
            if failure.check(PayloadTooLarge):
                message = f"Request too large: {failure.value}"
                answer(413, message.encode("utf-8"))
                return
            log.failure(
                "source {source}: could not buffer an event",
                failure,
                source=self._pipeline.config.id,
            )
            answer(500, b"Could not store the request")

        ensureDeferred(self._pipeline.submit(content)).addCallbacks(stored, failed)
        return NOT_DONE_YET
