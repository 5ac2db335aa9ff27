"""
The size of an event in a relay request: what C{maxPayloadBytes} limits.

A batch goes to the relay as a JSON array of the events' strings, so an
event sent alone takes its JSON-encoded size plus the two brackets.  The
source pipeline measures events this way before it buffers them, and the
forwarder before it sends them: both agree on which event can never leave.
The forwarder also cuts its batches here, to the limit and to its goal.
"""

from __future__ import annotations

import json
from typing import TypeVar

Event = TypeVar("Event")

# json.dumps writes no character in more than six bytes (a control character
# as \u001f; non-ASCII text stays UTF-8, at most four bytes a character).
WORST_BYTES_PER_CHARACTER = 6

# The string's quotes and the array's brackets.
FRAMING_BYTES = 4


def encode_event(content: str) -> bytes:
    """Encode one event as the JSON string a relay request carries."""
    return json.dumps(content, ensure_ascii=False).encode("utf-8")


def largest_surely_fitting(max_payload_bytes: int) -> int:
    """
    Return the length in characters up to which any event fits alone in a
    request of C{max_payload_bytes}, whatever its characters.
    """
    return max(0, (max_payload_bytes - FRAMING_BYTES) // WORST_BYTES_PER_CHARACTER)


def largest_encoded_event(max_payload_bytes: int) -> int:
    """
    Return the size in bytes of the largest encoded event (L{encode_event})
    a request of C{max_payload_bytes} carries alone, within its brackets.
    """
    return max_payload_bytes - 2


def fits_alone(content: str, max_payload_bytes: int) -> bool:
    """
    Tell whether a request carrying C{content} alone stays within
    C{max_payload_bytes}.

    An event short enough to fit whatever its characters costs a length
    check; only a longer one is encoded and measured.
    """
    if len(content) <= largest_surely_fitting(max_payload_bytes):
        return True
    return len(encode_event(content)) <= largest_encoded_event(max_payload_bytes)


def fit_payload(
    events: list[Event], encoded: list[bytes], limit: int
) -> tuple[list[Event], list[bytes]]:
    """
    Keep the longest run of oldest events whose JSON array fits C{limit};
    the first always stays.
    """
    size = 2
    for index, item in enumerate(encoded):
        size += len(item) + (1 if index else 0)
        if size > limit and index > 0:
            return events[:index], encoded[:index]
    return events, encoded


def up_to_goal(
    events: list[Event], encoded: list[bytes], goal: int
) -> tuple[list[Event], list[bytes]]:
    """Keep the oldest events up to the first that brings the batch to C{goal}."""
    size = 0
    for index, item in enumerate(encoded):
        size += len(item)
        if size >= goal:
            return events[: index + 1], encoded[: index + 1]
    return events, encoded
