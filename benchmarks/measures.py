"""
Figures of the pipeline suites (C{ingest}, C{relay}, C{pipeline}), each
beside the baseline measured in the same run, with its target and verdict.

Unlike the C{lua} suite's calls/s, these figures come in several units and
directions: a rate must reach its target, a latency or a memory figure must
stay under it, and the ingest target is a fraction of its baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

AT_LEAST = "at least"
AT_MOST = "at most"
RATIO_AT_LEAST = "ratio at least"


@attrs.frozen
class Measure:
    """
    One figure of ours beside its baseline.

    @ivar target_kind: L{AT_LEAST}, L{AT_MOST} (our figure against
        C{target}) or L{RATIO_AT_LEAST} (ours / baseline against it).
    """

    name: str
    unit: str
    ours: float
    baseline_name: str
    baseline: float
    target: float | None
    target_kind: str = AT_LEAST

    @property
    def ratio(self) -> float:
        """Our figure as a fraction of the baseline's."""
        return self.ours / self.baseline if self.baseline else 0.0

    @property
    def met(self) -> bool:
        """Whether our figure holds its target (one without any does)."""
        if self.target is None:
            return True
        if self.target_kind == AT_MOST:
            return self.ours <= self.target
        if self.target_kind == RATIO_AT_LEAST:
            return self.ratio >= self.target
        return self.ours >= self.target

    def target_text(self) -> str:
        """The target as people read it: C{>= 20,000}, C{<= 100}, C{>= 0.6x}."""
        if self.target is None:
            return "-"
        if self.target_kind == RATIO_AT_LEAST:
            return f">= {self.target:g}x"
        sign = "<=" if self.target_kind == AT_MOST else ">="
        return f"{sign} {_number(self.target)}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def report(measures: Sequence[Measure]) -> list[str]:
    """Format the figures as a table, one row per measure."""
    name_width = max([24, *(len(m.name) for m in measures)])
    base_width = max([16, *(len(m.baseline_name) for m in measures)])
    lines = [
        f"{'measure':<{name_width}} {'ours':>11} {'unit':<8} "
        f"{'baseline':<{base_width}} {'baseline':>11} {'ratio':>6} "
        f"{'target':>11}"
    ]
    for measure in measures:
        verdict = "" if measure.target is None else "met"
        if not measure.met:
            verdict = "MISSED"
        lines.append(
            f"{measure.name:<{name_width}} {_number(measure.ours):>11} "
            f"{measure.unit:<8} {measure.baseline_name:<{base_width}} "
            f"{_number(measure.baseline):>11} {measure.ratio:>6.2f} "
            f"{measure.target_text():>11} {verdict}".rstrip()
        )
    return lines


def run_suite(
    prog: str,
    measure: Callable[[bool], Sequence[Measure]],
    argv: Sequence[str] | None,
) -> int:
    """
    Parse C{--quick}, measure and print the load average and the table: the
    command line of a pipeline suite run on its own.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    options = parser.parse_args(argv)
    print(f"load average {load_average()}")
    print("\n".join(report(measure(options.quick))))
    return 0


def load_average() -> str:
    """The machine's 1-minute load average, to print beside the figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def peak_rss_mb(pid: int) -> float:
    """Return the peak resident memory (C{VmHWM}) of process C{pid}, in MB."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    """Return the resident memory (C{VmRSS}) of process C{pid}, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """Return the CPU time process C{pid} has used so far (user + system)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the C{fraction} percentile of C{values} (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


class Deadline:
    """A bound on a wait: how long is left of C{seconds} from now."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        """Whether the time is up."""
        return time.monotonic() >= self._end
