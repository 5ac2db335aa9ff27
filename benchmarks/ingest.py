"""
Measure ingest: requests/s into the proxy's C{http} source.

Run from the repository root::

    python -m benchmarks.ingest           # 2 x 8 s per server
    python -m benchmarks.ingest --quick   # 1 x 1 s per server

  - ours: the proxy daemon (twistd), its C{http} source through the
    pass-through Lua script, each request answered only once its event is
    committed to the sink's buffer.  The sink's relay is a loopback port
    where nothing listens: forwarding backs off and stays out of the way,
    so the figure is the ingest path alone;
  - baseline: a bare twisted.web resource in a process of its own that reads
    the body and answers 200 (L{benchmarks.daemons.serve_bare}).

Both get the same load generator with the same connections, and the same
small JSON body: C{wrk} (one thread) when Debian's C{wrk} is installed and
the run is a full one, else L{benchmarks.loadgen}.  Target: ours at least
0.6 of the baseline.  The best of the repetitions is kept, alternating
baseline and ours so that both see the same machine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks import loadgen
from benchmarks.daemons import BareServer, Cluster
from benchmarks.measures import RATIO_AT_LEAST, Measure, run_suite

CONNECTIONS = 32
BODY = '{"user": 42, "action": "click", "page": "/checkout", "ms": 187}'
PATH = "/hooks/ingest"
TARGET_RATIO = 0.6


def _load(port: int, seconds: float, use_wrk: bool) -> float:
    if use_wrk:
        figures = loadgen.spawn_wrk(port, PATH, CONNECTIONS, seconds, BODY)
    else:
        figures = loadgen.spawn(port, PATH, CONNECTIONS, seconds, body=BODY)
    if not figures["ok"] or figures["other"] or figures["failed"]:
        raise RuntimeError(f"the load was not all answered 200: {figures}")
    return float(figures["ok"]) / float(figures["seconds"])  # type: ignore[arg-type]


def measure(quick: bool = False) -> list[Measure]:
    """Measure ours and the baseline; return the ingest figure."""
    seconds, repetitions = (1.0, 1) if quick else (8.0, 2)
    use_wrk = not quick and loadgen.wrk_available()
    generator = "wrk" if use_wrk else "loadgen"
    ours = baseline = 0.0
    with Cluster() as cluster:
        relay_nowhere = f"http://127.0.0.1:{cluster.ports['nowhere']}/"
        cluster.start(
            "proxy",
            cluster.proxy_config(
                [cluster.http_source(cluster.pass_through_script())],
                relay_url=relay_nowhere,
            ),
        )
        for _ in range(repetitions):
            bare = BareServer(lifetime=seconds + 60)
            try:
                baseline = max(baseline, _load(bare.port, seconds, use_wrk))
            finally:
                bare.close()
            ours = max(ours, _load(cluster.ports["proxy"], seconds, use_wrk))
    return [
        Measure(
            f"ingest, {CONNECTIONS} conns",
            "req/s",
            ours,
            f"bare twisted.web ({generator})",
            baseline,
            TARGET_RATIO,
            RATIO_AT_LEAST,
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the figures."""
    return run_suite("python -m benchmarks.ingest", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
