"""
A smoke run of the C{logfile} benchmark: C{python -m benchmarks.logfile
--quick} still runs and reports its figures.  Nothing here asserts on
speed, which depends on the machine.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.logfile import measure_logfile, report


class QuickLogFileBenchmarkTests(SynchronousTestCase):
    """The quick run of the logfile benchmark."""

    def test_reports_ours_beside_each_baseline(self) -> None:
        """
        The quick run measures our lines/s and both baselines', all
        positive, and prints a row for each baseline.
        """
        figures = measure_logfile(quick=True)

        self.assertEqual(
            [figure.baseline_name for figure in figures],
            ["read + insert", "read + wrap + insert"],
        )
        for figure in figures:
            self.assertGreater(figure.ours, 0)
            self.assertGreater(figure.baseline, 0)
        self.assertEqual(len(report(figures)), 3)
