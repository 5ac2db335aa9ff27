"""
Build the sink a configuration names.
"""

from __future__ import annotations

from typing import Any

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.logfile import LogSink
from replayforge.player.sinks.notification import NotificationSink
from replayforge.player.sinks.settings import (
    DbSinkSettings,
    HttpSinkSettings,
    LogSinkSettings,
    NotificationSinkSettings,
)


def make_sink(config: PlayerSinkConfig, reactor: Any, queue_instance: str = "") -> Sink:
    """
    Build the sink C{config} describes, on C{reactor}.

    @param queue_instance: the name of the queue file feeding the sink,
        for the sinks that recognise events they already applied.
    """
    settings = config.settings
    if isinstance(settings, HttpSinkSettings):
        return HttpSink(config, reactor)
    if isinstance(settings, DbSinkSettings):
        return DbSink(config, reactor, queue_instance=queue_instance)
    if isinstance(settings, LogSinkSettings):
        return LogSink(config, reactor)
    if isinstance(settings, NotificationSinkSettings):
        return NotificationSink(config, reactor)
    raise TypeError(f"no sink implements the settings {settings!r}")
