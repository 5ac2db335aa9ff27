"""
The command-line options every daemon's twistd plugin shares.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage

from replayforge.logs import route_twistd_logging


class DaemonOptions(usage.Options):
    """
    C{-c FILE}: the daemon's configuration file, which must exist.

    Under twistd, the daemon's log output is routed through its filter
    (L{replayforge.logs}).
    """

    optParameters = [
        ["config", "c", None, "Configuration file (.json, .yaml or .yml)."],
    ]

    def postOptions(self) -> None:
        path = self["config"]
        if not path:
            raise usage.UsageError("a configuration file is required: -c FILE")
        if not Path(path).is_file():
            raise usage.UsageError(f"no configuration file at {path}")
        server_options = getattr(self, "parent", None)
        if server_options is not None:
            route_twistd_logging(server_options)
