"""
The player's side of the relay protocol, for one bucket.

C{GET first-batch} fetches the oldest records, C{DELETE acknowledge-batch}
removes them; both carry the bucket, its bearer token and the player's
environment and host names, as the Go player sent them.  Every failure
(network, timeout, an unexpected status or body) becomes a L{RelayError}.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from replayforge.player.config import PlayerConfig, PlayerSourceConfig

REQUEST_TIMEOUT_SECONDS = 30.0
ERROR_EXCERPT_CHARS = 200


class HTTPClient(Protocol):
    """The part of treq's client used here (treq or StubTreq)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request; fire with a treq response."""
        ...


class RelayError(Exception):
    """The relay could not be used just now; the caller backs off and retries."""


class PulledRecord(NamedTuple):
    """
    One record of a batch; C{content} is L{None} when it was not text.

    A named tuple: a batch makes a thousand of them.
    """

    id: int
    content: str | None


@attrs.frozen
class PulledBatch:
    """
    What C{first-batch} answered.

    @ivar unusable: entries without a usable id, which cannot be
        acknowledged.
    """

    records: list[PulledRecord]
    unusable: int = 0


class BucketClient:
    """Fetch and acknowledge the records of one bucket."""

    def __init__(
        self,
        config: PlayerConfig,
        source: PlayerSourceConfig,
        client: HTTPClient,
        clock: IReactorTime,
    ) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._headers = {
            "RF-BUCKET": source.name,
            "Authorization": f"Bearer {source.bearer}",
            "RF-HOSTNAME": config.host_name,
        }
        if config.env_name:
            self._headers["RF-ENV-NAME"] = config.env_name

    async def first_batch(self) -> PulledBatch:
        """
        Fetch up to C{pollLimit} of the oldest records, letting a relay of
        ours hold the request up to C{pollWaitSecs} for new ones.

        @return: an empty batch when the bucket is empty.
        """
        wait = self._config.poll_wait_seconds
        code, body = await self._call(
            "GET",
            f"first-batch?limit={self._config.poll_limit}&wait={wait:g}",
            wait + REQUEST_TIMEOUT_SECONDS,
            headers=self._headers,
        )
        if code == 404:
            return PulledBatch([])
        if code != 200:
            raise RelayError(f"first-batch answered {code}: {_excerpt(body)}")
        return _parse_batch(body)

    async def acknowledge(self, ids: list[int]) -> bool:
        """
        Delete the records with C{ids} from the bucket.

        @return: C{False} when none of them was left to delete.
        """
        payload = json.dumps({"ids": [str(record_id) for record_id in ids]})
        code, body = await self._call(
            "DELETE",
            "acknowledge-batch",
            REQUEST_TIMEOUT_SECONDS,
            headers={**self._headers, "Content-Type": "application/json"},
            data=payload.encode("utf-8"),
        )
        if code == 404:
            return False
        if code != 200:
            raise RelayError(f"acknowledge-batch answered {code}: {_excerpt(body)}")
        return True

    async def _call(
        self, method: str, path: str, timeout: float, **kwargs: Any
    ) -> tuple[int, bytes]:
        url = self._config.relay_url + path
        what = f"{method} {path.split('?')[0]}"
        try:
            response = await self._client.request(method, url, **kwargs).addTimeout(
                timeout, self._clock
            )
            body: bytes = await response.content().addTimeout(timeout, self._clock)
        except defer.TimeoutError:
            raise RelayError(f"{what}: no answer in time") from None
        except CancelledError:
            raise
        except Exception as error:
            raise RelayError(f"{what} failed: {_describe(error)}") from None
        return response.code, body


def _parse_batch(body: bytes) -> PulledBatch:
    try:
        document = json.loads(body)
    except ValueError:
        raise RelayError("first-batch answered invalid JSON") from None
    if not isinstance(document, list):
        raise RelayError("first-batch answered JSON that is not an array")
    records = []
    unusable = 0
    for item in document:
        record_id = _record_id(item.get("id") if isinstance(item, dict) else None)
        if record_id is None:
            unusable += 1
            continue
        content = item.get("content")
        records.append(
            PulledRecord(record_id, content if isinstance(content, str) else None)
        )
    return PulledBatch(records, unusable)


def _record_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _excerpt(body: bytes) -> str:
    return body[:ERROR_EXCERPT_CHARS].decode("utf-8", "replace").strip()


def _describe(error: Exception) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(reason.value) for reason in reasons)
    return str(error) or type(error).__name__
