"""
The C{http} sink: replay each call object to C{targetHost}.

A call is sent as captured: its method, its path, its query rebuilt from
C{params} (C{;}, C{=}, C{/}, C{:} and the like stay as sent; C{&}, C{#},
C{+}, C{%} and spaces inside a value are escaped so the target reads the
same values), its headers and its body, byte for byte.  Hop-by-hop headers
(C{Connection} and those it names, C{Keep-Alive}, C{Transfer-Encoding},
C{TE}, C{Trailer}, C{Upgrade}, C{Proxy-Connection}) and C{Host} and
C{Content-Length} are left out: the length is computed again from the body.

Up to C{maxConcurrency} calls are in flight at once (default 1: calls go
out one after the other, in order).  Once one asks for a retry, the calls
after it in the batch are not sent, so the worker's backoff applies to the
target as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import (
    POSTPONED,
    Outcome,
    QueuedEvent,
    Rejected,
    Retry,
    Sink,
)
from replayforge.player.sinks.callobject import (
    CallObject,
    NotACallObject,
    parse_call_object,
)
from replayforge.player.sinks.settings import HttpSinkSettings
from replayforge.player.sinks.webcall import WebCaller

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        "proxy-connection",
    }
)
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_NAME_SAFE = "/:@!$'()*,;?"
_QUERY_VALUE_SAFE = _QUERY_NAME_SAFE + "="


def replay_url(target_host: str, call: CallObject) -> bytes:
    """
    Build the URL a call is replayed to.

    Percent escapes already in the path are kept; anything else a URL may
    not carry is escaped, so a decoded path and a raw one both arrive.
    """
    path = quote(_STRAY_PERCENT.sub("%25", call.path), safe=_PATH_SAFE)
    query = "&".join(
        quote(name, safe=_QUERY_NAME_SAFE) + "=" + quote(value, safe=_QUERY_VALUE_SAFE)
        for name, value in call.params
    )
    url = target_host + path + ("?" + query if query else "")
    return url.encode("ascii")


def replay_headers(call: CallObject) -> Headers:
    """Return the call's headers without the hop-by-hop ones."""
    dropped = set(HOP_BY_HOP_HEADERS)
    for name, value in call.headers:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    headers = Headers()
    for name, value in call.headers:
        if name.lower() not in dropped:
            headers.addRawHeader(name, value)
    return headers


class HttpSink(Sink):
    """Replay call objects to one target, with bounded concurrency."""

    def __init__(self, config: PlayerSinkConfig, reactor: Any) -> None:
        super().__init__(config)
        assert isinstance(config.settings, HttpSinkSettings)
        self.settings: HttpSinkSettings = config.settings
        concurrency = self.settings.max_concurrency
        self.batch_size = max(8, 4 * concurrency)
        self._caller = WebCaller(
            reactor,
            self.settings.timeout_seconds,
            concurrency,
            self.settings.outgoing,
            f"sink {self.name}",
        )

    def stop(self) -> Deferred[None]:
        """Cancel the calls in flight and close the idle connections."""
        return self._caller.close()

    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        """Replay C{events}; fire with one outcome per event."""
        return Deferred.fromCoroutine(self._deliver(events))

    async def _deliver(self, events: Sequence[QueuedEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = [POSTPONED] * len(events)
        halted = False

        async def replay(index: int, event: QueuedEvent) -> None:
            nonlocal halted
            if halted:
                return
            outcome = await self._replay(event)
            outcomes[index] = outcome
            if isinstance(outcome, Retry):
                halted = True

        semaphore = DeferredSemaphore(self.settings.max_concurrency)
        calls = [
            semaphore.run(
                lambda i, e: Deferred.fromCoroutine(replay(i, e)), index, event
            )
            for index, event in enumerate(events)
        ]
        results = await DeferredList(calls, consumeErrors=True)
        for _, result in results:
            if isinstance(result, Failure):
                result.raiseException()
        return outcomes

    def _replay(self, event: QueuedEvent) -> Deferred[Outcome]:
        try:
            call = parse_call_object(event.content)
        except NotACallObject as error:
            return succeed(Rejected("unparseable", str(error)))
        body = call.body if call.body or call.method in METHODS_WITH_BODY else None
        try:
            url = replay_url(self.settings.target_host, call)
            headers = replay_headers(call)
        except ValueError as error:
            return succeed(
                Rejected("unparseable", f"cannot build the request: {error}")
            )
        return self._caller.call(
            call.method.encode("ascii"), url, headers, body, self.settings.retry
        )
