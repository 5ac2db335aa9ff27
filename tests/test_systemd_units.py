"""
The systemd units of C{conf/systemd/}: a dedicated user, a state directory,
restarts, hardening and the journal, for each daemon.

The units are read as systemd reads them (sections of C{Key=value} lines, a
key given twice adds to the list); where C{systemd-analyze} is installed,
it verifies them too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import DAEMONS

REPOSITORY = Path(__file__).resolve().parent.parent
UNITS = REPOSITORY / "conf" / "systemd"
INSTALLED_TWISTD = "/opt/replayforge/bin/twistd"

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    # pyOpenSSL callbacks need writable, executable pages for TLS.
    "MemoryDenyWriteExecute": "no",
    "CapabilityBoundingSet": "",
}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """
    Read a unit file: per section, per key, every value given, in order.

    Comments and blank lines are skipped; a line that is neither fails.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", stripped)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, equals, value = stripped.partition("=")
        if not equals or current is None or not re.fullmatch(r"\w+", key):
            raise AssertionError(f"{path.name}:{number}: not a unit line: {line!r}")
        current.setdefault(key, []).append(value)
    return sections


class UnitTests(SynchronousTestCase):
    """Each daemon's unit runs it the way the README promises."""

    def service(self, daemon: str) -> dict[str, list[str]]:
        """The C{[Service]} section of C{daemon}'s unit."""
        return read_unit(UNITS / f"replayforge-{daemon}.service")["Service"]

    def one(self, daemon: str, key: str) -> str:
        """The single value of C{key} in C{daemon}'s C{[Service]}."""
        values = self.service(daemon).get(key)
        self.assertEqual(len(values or []), 1, f"{daemon}: {key} = {values}")
        assert values is not None
        return values[0]

    def test_one_unit_per_daemon(self) -> None:
        """There is a unit for each daemon, and the user they run as."""
        names = {path.name for path in UNITS.iterdir()}
        expected = {f"replayforge-{daemon}.service" for daemon in DAEMONS}
        self.assertLessEqual({*expected, "replayforge.sysusers.conf"}, names)

    def test_dedicated_user(self) -> None:
        """
        Every daemon runs as the C{replayforge} user, not a dynamic one,
        with its own state directory as working directory.
        """
        for daemon in DAEMONS:
            self.assertEqual(self.one(daemon, "User"), "replayforge")
            self.assertEqual(self.one(daemon, "Group"), "replayforge")
            self.assertNotIn("DynamicUser", self.service(daemon))
            self.assertEqual(
                self.one(daemon, "StateDirectory"), f"replayforge/{daemon}"
            )
            self.assertEqual(
                self.one(daemon, "WorkingDirectory"), f"/var/lib/replayforge/{daemon}"
            )

    def test_user_declared(self) -> None:
        """The sysusers file declares the user the units name."""
        lines = [
            line.split()
            for line in (UNITS / "replayforge.sysusers.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0][:3], ["u", "replayforge", "-"])
        self.assertEqual(lines[0][-1], "/var/lib/replayforge")

    def test_runs_twistd_in_the_foreground(self) -> None:
        """
        The daemon runs under twistd without forking or a pid file, with its
        configuration from C{/etc/replayforge}; systemd restarts it when it
        fails and its output goes to the journal.
        """
        for daemon in DAEMONS:
            command = self.one(daemon, "ExecStart").split()
            self.assertEqual(
                command,
                [
                    INSTALLED_TWISTD,
                    "--nodaemon",
                    "--pidfile=",
                    f"replayforge-{daemon}",
                    "-c",
                    f"/etc/replayforge/{daemon}.yaml",
                ],
            )
            self.assertEqual(self.one(daemon, "Type"), "simple")
            self.assertEqual(self.one(daemon, "Restart"), "on-failure")
            self.assertGreater(float(self.one(daemon, "RestartSec")), 0)
            self.assertEqual(self.one(daemon, "StandardOutput"), "journal")
            self.assertEqual(
                self.one(daemon, "SyslogIdentifier"), f"replayforge-{daemon}"
            )

    def test_hardening(self) -> None:
        """
        Every unit sees a read-only system, no home folders, no devices, no
        privileges to gain, and may open IP and unix sockets only.
        """
        for daemon in DAEMONS:
            for key, value in HARDENING.items():
                self.assertEqual(self.one(daemon, key), value, f"{daemon}: {key}")
            self.assertEqual(
                set(self.one(daemon, "RestrictAddressFamilies").split()),
                {"AF_INET", "AF_INET6", "AF_UNIX"},
            )

    def test_proxy_reads_logs(self) -> None:
        """The proxy may read C{/var/log} through the C{adm} group; no other."""
        self.assertEqual(self.one("proxy", "SupplementaryGroups"), "adm")
        for daemon in ("relay", "player"):
            self.assertNotIn("SupplementaryGroups", self.service(daemon))

    def test_installed_at_boot(self) -> None:
        """Every unit is wanted by the multi-user target."""
        for daemon in DAEMONS:
            unit = read_unit(UNITS / f"replayforge-{daemon}.service")
            self.assertEqual(unit["Install"]["WantedBy"], ["multi-user.target"])
            self.assertIn("network-online.target", unit["Unit"]["After"])

    def test_systemd_verifies(self) -> None:
        """
        C{systemd-analyze verify} finds nothing to say about the units, with
        twistd pointed at this environment's.
        """
        analyze = shutil.which("systemd-analyze")
        twistd = Path(sys.executable).parent / "twistd"
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        if not twistd.exists():
            raise SkipTest(f"no twistd beside {sys.executable}")
        folder = Path(tempfile.mkdtemp(prefix="rf-units-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        copies = []
        for daemon in DAEMONS:
            name = f"replayforge-{daemon}.service"
            text = (UNITS / name).read_text().replace(INSTALLED_TWISTD, str(twistd))
            (folder / name).write_text(text)
            copies.append(str(folder / name))

        result = subprocess.run(
            [analyze, "verify", *copies],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        complaints = [line for line in result.stderr.splitlines() if ".service" in line]
        self.assertEqual((result.returncode, complaints), (0, []), result.stderr)
