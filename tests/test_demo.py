"""
The README's first command: the demo runs the sample configuration end to
end and finds every event in the player's database.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import free_port

CONF = Path(__file__).resolve().parent.parent / "conf"
SAMPLE_PORTS = ("8081", "8082", "8090", "8092", "8200", "8202")


class DemoTests(SynchronousTestCase):
    """C{python -m replayforge.demo} on a copy of C{conf/}."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-demo-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        shutil.copytree(CONF, self.folder / "conf")
        ports = {port: str(free_port()) for port in SAMPLE_PORTS}
        pattern = re.compile(r"\b(" + "|".join(SAMPLE_PORTS) + r")\b")
        for path in (self.folder / "conf").glob("*.yaml"):
            text = path.read_text()
            path.write_text(pattern.sub(lambda match: ports[match.group(1)], text))

    def test_demo_finds_every_event(self) -> None:
        """
        The demo starts the three daemons, sends the samples and 50 orders,
        reports each table complete and exits 0, leaving no daemon behind.
        """
        result = subprocess.run(
            [sys.executable, "-m", "replayforge.demo", "--orders", "50"],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("table shop        51 rows (sent 51)", result.stdout)
        self.assertIn("table github       1 rows (sent 1)", result.stdout)
        self.assertIn('"event": "push"', result.stdout)
