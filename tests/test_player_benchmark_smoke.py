"""
A smoke run of the player's benchmarks: C{benchmarks.player.measure} in its
quick form still runs and gives each figure beside its baseline.  Nothing
here asserts on speed, which depends on the machine.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from benchmarks.player import measure, report


class QuickPlayerBenchmarkTests(SynchronousTestCase):
    """The quick run of the player benchmarks."""

    def test_each_figure_beside_its_baseline(self) -> None:
        """
        The db sink and http replay measures each give a positive rate for
        ours and for the baseline measured in the same run.
        """
        figures = measure(quick=True)
        self.assertEqual(
            [figure.name for figure in figures],
            ["db sink write", "db sink via queue", "http replay x1", "http replay x8"],
        )
        for figure in figures:
            self.assertGreater(figure.ours, 0, figure)
            self.assertGreater(figure.baseline, 0, figure)
        self.assertEqual(len(report(figures)), len(figures) + 1)
