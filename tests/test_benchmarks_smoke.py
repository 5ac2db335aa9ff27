"""
A smoke run of the benchmarks: C{python -m benchmarks.run lua --quick}
still runs and prints its figures.  Nothing here asserts on speed, which
depends on the machine.
"""

from __future__ import annotations

import contextlib
import io
import re

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.run import main

FIGURE_ROW = re.compile(
    r"^(?P<name>.+?Process)\s+(?P<ours>[\d,]+)\s+(?P<baseline_name>.+?)\s+"
    r"(?P<baseline>[\d,]+)\s+(?P<ratio>[\d.]+)\s+(?P<target>[\d,]+)\s+(met|MISSED)$"
)


class QuickLuaBenchmarkTests(SynchronousTestCase):
    """The quick run of the Lua benchmarks."""

    def test_prints_each_figure_beside_its_baseline(self) -> None:
        """
        The quick run exits 0 and prints, for the pass-through and the nginx
        grok measures, our calls/s, a baseline's and the target, all
        positive.
        """
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["lua", "--quick"])
        self.assertEqual(code, 0)
        rows = [
            found.groupdict()
            for line in out.getvalue().splitlines()
            if (found := FIGURE_ROW.match(line))
        ]
        self.assertEqual(
            {row["name"] for row in rows},
            {"pass-through Process", "nginx grok Process"},
        )
        for row in rows:
            for key in ("ours", "baseline", "target"):
                self.assertGreater(int(row[key].replace(",", "")), 0, row)
