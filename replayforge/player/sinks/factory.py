"""
Build the sink a configuration names.
"""

from __future__ import annotations

from typing import Any

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.settings import DbSinkSettings, HttpSinkSettings


def make_sink(config: PlayerSinkConfig, reactor: Any) -> Sink:
    """Build the sink C{config} describes, on C{reactor}."""
    if isinstance(config.settings, HttpSinkSettings):
        return HttpSink(config, reactor)
    if isinstance(config.settings, DbSinkSettings):
        return DbSink(config, reactor)
    raise TypeError(f"no sink implements the settings {config.settings!r}")
