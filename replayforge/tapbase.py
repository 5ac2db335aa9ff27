"""
The command-line options every daemon's twistd plugin shares.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage


class DaemonOptions(usage.Options):
    """C{-c FILE}: the daemon's configuration file, which must exist."""

    optParameters = [
        ["config", "c", None, "Configuration file (.json, .yaml or .yml)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("a configuration file is required: -c FILE")
        if not Path(path).is_file():
            raise usage.UsageError(f"no configuration file at {path}")
