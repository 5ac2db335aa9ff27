"""
Run the blocking part of a source (file reads, system figures) in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Run a blocking function away from the reactor thread."""

    def __call__(self, work: Callable[[], T]) -> Deferred[T]:
        """Run C{work}; fire with what it returns, or fail with its error."""
        ...


class ReactorThreads:
    """
    A L{BlockingRunner} on the reactor's own thread pool.

    Each source waits for one call before it makes the next, so a source
    holds at most one of the pool's threads.
    """

    def __init__(self, reactor: IReactorThreads) -> None:
        self._reactor = reactor

    def __call__(self, work: Callable[[], T]) -> Deferred[T]:
        """Run C{work} in a thread of the reactor's pool."""
        pool = self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, work)
