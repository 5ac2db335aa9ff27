"""
Guards for the whole test suite.

A database pool left open keeps its worker thread alive, and Python waits
for that thread at exit: the run would print its results and then hang.
Each test is therefore checked for pool threads it started and did not stop,
and fails by name if it leaked one; should any still be alive when the run
ends, the process exits anyway, with the run's own status.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator

import pytest

# Threads of unnamed thread pools, as adbapi makes them; the reactor's own
# pool ("PoolThread-twisted.internet.reactor-N") lives for the whole run.
POOL_THREAD = re.compile(r"PoolThread-\d+-\d+$")


def _pool_threads() -> set[threading.Thread]:
    return {
        thread
        for thread in threading.enumerate()
        if POOL_THREAD.match(thread.name) and thread.is_alive()
    }


@pytest.fixture(autouse=True)
def no_leaked_pool_threads() -> Iterator[None]:
    """Fail a test that leaves a thread pool (an open adbapi pool) running."""
    before = _pool_threads()
    yield
    leaked = _pool_threads() - before
    if leaked:
        names = ", ".join(sorted(thread.name for thread in leaked))
        pytest.fail(
            f"the test left {len(leaked)} pool thread(s) running ({names}): "
            "a ConnectionPool or thread pool was not closed"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit even if a leaked pool thread would keep the process alive."""
    if _pool_threads():
        sys.stdout.flush()
        sys.stderr.flush()
        status = getattr(config, "_replayforge_exit_status", 1)
        os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the run's status for L{pytest_unconfigure}."""
    session.config._replayforge_exit_status = exitstatus  # type: ignore[attr-defined]
