"""
The C{notification} sink: send each message to named webhooks.

The message is taken from the event as the Go player took it: from a call
object (C{POST} only) whose body is JSON, its C{message} (required) and
C{subject}; from a body that is not JSON, the whole body.  Ours too: an
event that is a JSON object with a C{message} but no call-object keys is
read directly, and an event that is not JSON is itself the message.

Each webhook receives the message, or its C{buildPayload} template with
C{{{subject}}} and C{{{message}}} replaced by the values escaped for a
JSON string (the Go player escaped only quotes and line breaks), with
C{Content-Type} C{text/plain} or, for C{contentType: json},
C{application/json}, then its own C{header} entries (which the Go player
ignored).  An event is delivered once every webhook answered 2xx or 3xx; a
webhook that already took it is not called again when another one is
retried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import (
    DELIVERED,
    Delivered,
    Outcome,
    QueuedEvent,
    Rejected,
    Retry,
    Sink,
)
from replayforge.player.sinks.callobject import NotACallObject, parse_call_object
from replayforge.player.sinks.settings import NotificationSinkSettings, WebhookSettings
from replayforge.player.sinks.webcall import WebCaller

_CALL_OBJECT_KEYS = frozenset({"method", "path", "body", "headers", "params"})


class Unusable(Exception):
    """An event that holds no message; C{reason} is how it is counted."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason


def read_message(text: str) -> tuple[str, str]:
    """
    Return the C{(subject, message)} of an event.

    @raise Unusable: when the event holds no message.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return "", text
    if not isinstance(document, dict):
        return "", text
    if not _CALL_OBJECT_KEYS & set(document):
        return _from_fields(document, text)
    try:
        call = parse_call_object(text)
    except NotACallObject as error:
        raise Unusable("unparseable", str(error)) from None
    if call.method != "POST":
        raise Unusable("unsupported_method", f"{call.method}: expected POST")
    body = call.body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "", body
    if not isinstance(data, dict):
        return "", body
    return _from_fields(data, body)


def _from_fields(data: dict[str, Any], text: str) -> tuple[str, str]:
    message = data.get("message")
    if not isinstance(message, str):
        raise Unusable("bad_body", "message not found in JSON")
    subject = data.get("subject")
    return (subject if isinstance(subject, str) else ""), message


def _escaped(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def build_payload(template: str, subject: str, message: str) -> str:
    """Return what a webhook with C{buildPayload} C{template} receives."""
    if not template:
        return message
    payload = template.replace("{{subject}}", _escaped(subject))
    return payload.replace("{{message}}", _escaped(message))


def webhook_headers(webhook: WebhookSettings) -> Headers:
    """Return the headers of a call to C{webhook}."""
    headers = Headers()
    content_type = "application/json" if webhook.json else "text/plain"
    headers.setRawHeaders("Content-Type", [content_type])
    for name, value in webhook.headers:
        headers.setRawHeaders(name, [value])
    return headers


class NotificationSink(Sink):
    """Call every configured webhook with each event's message."""

    batch_size = 16

    def __init__(self, config: PlayerSinkConfig, reactor: Any) -> None:
        super().__init__(config)
        assert isinstance(config.settings, NotificationSinkSettings)
        self.settings: NotificationSinkSettings = config.settings
        self._caller = WebCaller(
            reactor,
            self.settings.timeout_seconds,
            len(self.settings.webhooks),
            self.settings.outgoing,
            f"sink {self.name}",
        )
        # Webhooks that took an event whose other webhooks are retried.
        self._taken: dict[int, set[str]] = {}

    def stop(self) -> Deferred[None]:
        """Cancel the calls in flight and close the idle connections."""
        return self._caller.close()

    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        """Notify each event's message; fire with one outcome per event."""
        return Deferred.fromCoroutine(self._deliver(events))

    async def _deliver(self, events: Sequence[QueuedEvent]) -> list[Outcome]:
        if events:
            # Older events are settled for good: forget their webhooks.
            oldest = events[0].id
            for event_id in [key for key in self._taken if key < oldest]:
                del self._taken[event_id]
        outcomes: list[Outcome] = []
        for event in events:
            outcome = await self._notify(event)
            outcomes.append(outcome)
            if not isinstance(outcome, Retry):
                self._taken.pop(event.id, None)
        return outcomes

    async def _notify(self, event: QueuedEvent) -> Outcome:
        try:
            subject, message = read_message(event.content)
        except Unusable as unusable:
            return Rejected(unusable.reason, str(unusable))
        taken = self._taken.setdefault(event.id, set())
        retries: list[Retry] = []
        rejections: list[str] = []
        for webhook in self.settings.webhooks:
            if webhook.name in taken:
                continue
            payload = build_payload(webhook.build_payload, subject, message)
            outcome = await self._caller.call(
                webhook.method.encode("ascii"),
                webhook.url.encode("utf-8"),
                webhook_headers(webhook),
                payload.encode("utf-8"),
                self.settings.retry,
            )
            if isinstance(outcome, Delivered):
                taken.add(webhook.name)
            elif isinstance(outcome, Retry):
                retries.append(
                    Retry(f"{webhook.name}: {outcome.reason}", outcome.retry_after)
                )
            elif isinstance(outcome, Rejected):
                rejections.append(f"{webhook.name}: {outcome.detail}")
        if retries:
            waits = [
                retry.retry_after for retry in retries if retry.retry_after is not None
            ]
            return Retry(
                "; ".join(retry.reason for retry in retries),
                max(waits) if waits else None,
            )
        if rejections:
            return Rejected("rejected", "; ".join(rejections))
        return DELIVERED
