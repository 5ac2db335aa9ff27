"""
Build the service that runs a configured pulled source.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime

from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.http_source import CaptureResource
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import ReactorThreads
from replayforge.proxy.sources.logfile import LogFileService, LogFileSource
from replayforge.proxy.sources.positions import PositionStore
from replayforge.proxy.sources.repeatfile import RepeatFileSource, repeat_file_service
from replayforge.proxy.sources.settings import (
    LogFileSettings,
    PgCallSettings,
    RepeatFileSettings,
    SystemStatsSettings,
)
from replayforge.proxy.sources.system_stats import (
    SystemStatsService,
    SystemStatsSource,
)
from replayforge.proxy.stats import SourceStats
from replayforge.web import listening_service, make_site


def source_service(
    config: ProxySourceConfig,
    pipeline: SourcePipeline,
    stats: SourceStats,
    reactor: Any,
    clock: IReactorTime,
    env_name: str,
    host_name: str,
) -> IService:
    """
    Make the service of the source C{config}: the listener of an C{http}
    source, the polling task of any other.

    @param reactor: provides threads and runs the SQLite pools.
    @raise replayforge.store.StoreUnavailable: when a log file's position
        store cannot be opened.
    """
    if config.type == "http" and config.listen:
        site = make_site(
            CaptureResource(pipeline),
            config.max_body_bytes,
            decode_gzip=True,
            reactor=reactor,
        )
        return listening_service(config.listen, site, reactor)
    settings = config.settings
    threads = ReactorThreads(reactor)
    if isinstance(settings, LogFileSettings):
        positions = PositionStore(settings.position_path, config.id, reactor)
        logfile = LogFileSource(
            config.id,
            settings,
            pipeline,
            positions,
            threads,
            clock,
            drain_grace=config.hook_interval,
        )
        stats.detail = logfile.status
        return LogFileService(logfile, config.hook_interval, clock)
    if isinstance(settings, RepeatFileSettings):
        repeat = RepeatFileSource(config.id, settings, pipeline, threads, clock)
        return repeat_file_service(repeat, clock)
    if isinstance(settings, SystemStatsSettings):
        figures = SystemStatsSource(
            config.id, settings, pipeline, stats, threads, clock, env_name, host_name
        )
        return SystemStatsService(figures, clock)
    if isinstance(settings, PgCallSettings):
        # psycopg and libpq take about 9 MB: only a proxy with a pgcall
        # source pays for them.
        from replayforge.proxy.sources.pgcall import PgCallService, PgCallSource

        calls = PgCallSource(config.id, settings, pipeline, stats, reactor, clock)
        return PgCallService(calls, clock)
    raise ValueError(f"source {config.id!r}: no service for type {config.type!r}")
