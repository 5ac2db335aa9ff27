"""
Show the relay's status pages through the player's exposed port.

C{GET /relay-proxy/<rest>?<query>} is fetched from the scheme and host of
C{relayUrlStatusz} (plain C{http} when it names none) at C{/<rest>?<query>},
as the Go player did, and answered with the relay's status, content type
and body.  Nothing of the caller's request is passed on: neither its
headers (the player's own credentials among them) nor a body.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from replayforge.player.relay_client import HTTPClient
from replayforge.web import text_body

TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 8 * 1024 * 1024


def status_base(relay_url_statusz: str) -> str:
    """Return the scheme and host of C{relayUrlStatusz}, as a URL prefix."""
    text = relay_url_statusz.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.netloc}"


class RelayStatusProxy:
    """Fetch the relay's status pages for the exposed port."""

    def __init__(
        self, relay_url_statusz: str, client: HTTPClient, clock: IReactorTime
    ) -> None:
        self._base = status_base(relay_url_statusz)
        self._client = client
        self._clock = clock

    def url_for(self, segments: Sequence[bytes], query: bytes) -> str:
        """Return the relay URL of the path C{segments} and C{query}."""
        path = "/".join(quote(segment, safe="") for segment in segments)
        url = f"{self._base}/{path}"
        if query:
            url += "?" + query.decode("ascii", "replace")
        return url

    async def forward(self, request: IRequest, segments: Sequence[bytes]) -> bytes:
        """Answer C{request} with what the relay answers at C{segments}."""
        if request.method not in (b"GET", b"HEAD"):
            return text_body(request, 405, "Method not allowed\n")
        query = request.uri.partition(b"?")[2]
        url = self.url_for(segments, query)
        try:
            response = await self._client.request("GET", url).addTimeout(
                TIMEOUT_SECONDS, self._clock
            )
            body: bytes = await response.content().addTimeout(
                TIMEOUT_SECONDS, self._clock
            )
        except CancelledError:
            raise
        except defer.TimeoutError:
            return text_body(
                request, 504, "the relay's status did not answer in time\n"
            )
        except Exception as error:
            return text_body(
                request, 502, f"the relay's status is unreachable: {error}\n"
            )
        request.setResponseCode(response.code)
        content_type = response.headers.getRawHeaders(b"Content-Type")
        if content_type:
            request.setHeader(b"Content-Type", content_type[0])
        return body[:MAX_BODY_BYTES]
