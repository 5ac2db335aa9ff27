"""
The proxy's configuration: sources that capture events, sinks that forward.

Go-era keys load unchanged: C{sources[].params.listenPort},
C{sinks[].authBearer}, C{sinks[].config.batchMaxEvents} and the rest.  Ours:
C{params.listen} and C{listenStatusZ} (Twisted endpoint strings),
C{sinks[].dbMaxSizeKb} (the cap of the sink's buffer file) and, on a source or
sink with a script, C{luaEngine}, C{unsafeLua}, C{luaInstructionBudget} and
C{luaMaxMemoryMb} (see L{replayforge.lua.read_lua_settings}); per sink
C{caFile}, C{clientCert}, C{clientKey} and C{insecureSkipVerify}, and at the
top C{tailscaleSocks5} (see L{replayforge.outgoing}).
"""

from __future__ import annotations

import socket
from pathlib import Path

import attrs

from replayforge.config import Section, load_document
from replayforge.lua import LuaSettings, read_lua_settings
from replayforge.outgoing import (
    OutgoingSettings,
    Socks5Server,
    read_outgoing_settings,
    read_socks5,
)
from replayforge.proxy.sources.settings import SourceSettings, read_source_settings
from replayforge.web import endpoint_description

DEFAULT_BATCH_MAX_EVENTS = 1000
DEFAULT_BATCH_GOAL_BYTES = int(4.25 * 1024 * 1024)
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_BATCH_TIMEOUT_SECONDS = 5.0
DEFAULT_BUFFER_MAX_SIZE_KB = 100 * 1024
# Ours: how long a batch that is not full waits for company after its
# oldest event arrived, so that a busy link sends tens of requests a second
# rather than one per event, and no event waits long.
DEFAULT_BATCH_LINGER_MS = 20.0
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_HOOK_INTERVAL_SECONDS = 1.0
SOURCE_TYPES = ("http", "logfile", "repeatfile", "system-stats", "pgcall")


@attrs.frozen
class Batching:
    """When a sink's forwarder sends, and how much at once."""

    max_events: int
    goal_bytes: int
    max_payload_bytes: int
    timeout_seconds: float
    linger_seconds: float = 0.0

    @property
    def linger(self) -> float:
        """How long the oldest event may wait for a fuller batch."""
        return min(self.linger_seconds, self.timeout_seconds)


@attrs.frozen
class ProxySinkConfig:
    """One relay destination and its buffer."""

    id: str
    url: str
    auth_bearer: str = attrs.field(repr=False)
    buckets: list[str]
    database_path: Path
    max_bytes: int
    max_messages_per_minute: int
    transform_script: str | None
    batching: Batching
    lua: LuaSettings = attrs.field(factory=LuaSettings)
    outgoing: OutgoingSettings = attrs.field(factory=OutgoingSettings)
    use_tsnet: bool = False


@attrs.frozen
class ProxySourceConfig:
    """One source of events and where its events go."""

    id: str
    type: str
    transform_script: str | None
    target_sink: str | None
    hook_interval: float
    listen: str | None
    max_body_bytes: int
    lua: LuaSettings = attrs.field(factory=LuaSettings)
    settings: SourceSettings | None = None


@attrs.frozen
class ProxyConfig:
    """Everything the proxy reads from its file."""

    sources: list[ProxySourceConfig]
    sinks: dict[str, ProxySinkConfig]
    env_name: str
    host_name: str
    listen_status: str | None
    verbosity_level: str
    tsnet_hostname: str = ""


def _parse_sink(section: Section, socks5: Socks5Server | None) -> ProxySinkConfig:
    sink_id = section.text("id")
    kind = section.text("type", "http")
    if kind != "http":
        raise section.error("type", f"expected 'http', got {kind!r}")
    url = section.url("url", "use authBearer")
    # The relay ignores blank names in RF-BUCKETS; with none left it refuses
    # every batch, as after an unset $BUCKET: that is a config error.
    buckets = [name for name in section.text_list("buckets") if name]
    if not buckets:
        raise section.error("buckets", "expected at least one bucket")
    batching_section = section.section("config")
    batching = Batching(
        max_events=batching_section.integer(
            "batchMaxEvents", DEFAULT_BATCH_MAX_EVENTS, minimum=1
        ),
        goal_bytes=batching_section.integer(
            "batchGoalBytes", DEFAULT_BATCH_GOAL_BYTES, minimum=1
        ),
        max_payload_bytes=batching_section.integer(
            "maxPayloadBytes", DEFAULT_MAX_PAYLOAD_BYTES, minimum=64
        ),
        timeout_seconds=batching_section.number(
            "batchTimeoutSecs", DEFAULT_BATCH_TIMEOUT_SECONDS, minimum=0
        ),
        linger_seconds=batching_section.number(
            "batchLingerMs", DEFAULT_BATCH_LINGER_MS, minimum=0
        )
        / 1000,
    )
    batching_section.finish()
    config = ProxySinkConfig(
        id=sink_id,
        url=url if url.endswith("/") else url + "/",
        auth_bearer=section.text("authBearer", ""),
        buckets=buckets,
        database_path=Path(section.text("databasePath", f"{sink_id}-sink.sqlite3")),
        max_bytes=1024
        * section.integer("dbMaxSizeKb", DEFAULT_BUFFER_MAX_SIZE_KB, minimum=1),
        max_messages_per_minute=section.integer("maxMessagesPerMinute", 0, minimum=0),
        transform_script=section.text("transformScript", "") or None,
        batching=batching,
        lua=read_lua_settings(section),
        outgoing=read_outgoing_settings(section, socks5),
        use_tsnet=section.boolean("useTsnet", False),
    )
    section.finish()
    return config


def _parse_source(
    section: Section, sinks: dict[str, ProxySinkConfig]
) -> ProxySourceConfig:
    kind = section.text("type")
    if kind not in SOURCE_TYPES:
        raise section.error(
            "type", f"expected one of {', '.join(SOURCE_TYPES)}, got {kind!r}"
        )
    script = section.text("transformScript", "") or None
    target = section.text("targetSink", "") or None
    if script is None and target is None:
        raise section.error("targetSink", "expected a sink id (or a transformScript)")
    if target is not None and target not in sinks:
        raise section.error(
            "targetSink",
            f"expected one of the sink ids {sorted(sinks)}, got {target!r}",
        )
    params = section.section("params")
    listen = endpoint_description(
        params.endpoint("listen"), params.port("listenPort", 0)
    )
    if kind == "http" and listen is None:
        raise params.error("listenPort", "expected a port above 0 (or params.listen)")
    source_id = section.text("id")
    hook_interval = section.duration("hookInterval", DEFAULT_HOOK_INTERVAL_SECONDS)
    settings = read_source_settings(kind, source_id, params, hook_interval, section)
    config = ProxySourceConfig(
        id=source_id,
        type=kind,
        transform_script=script,
        target_sink=target,
        hook_interval=hook_interval,
        listen=listen,
        max_body_bytes=params.integer(
            "maxBodyBytes", DEFAULT_MAX_BODY_BYTES, minimum=1
        ),
        lua=read_lua_settings(section),
        settings=settings,
    )
    params.finish()
    section.finish()
    return config


def parse_proxy_config(document: Section) -> ProxyConfig:
    """Build a L{ProxyConfig} from the file's top-level mapping."""
    socks5 = read_socks5(document)
    sinks: dict[str, ProxySinkConfig] = {}
    for index, section in enumerate(document.sections("sinks")):
        sink = _parse_sink(section, socks5)
        if sink.id in sinks:
            raise document.error(f"sinks[{index}].id", f"duplicate sink id {sink.id!r}")
        sinks[sink.id] = sink
    if not sinks:
        raise document.error("sinks", "expected at least one sink")

    sources: list[ProxySourceConfig] = []
    for index, section in enumerate(document.sections("sources")):
        source = _parse_source(section, sinks)
        if any(other.id == source.id for other in sources):
            raise document.error(
                f"sources[{index}].id", f"duplicate source id {source.id!r}"
            )
        sources.append(source)

    config = ProxyConfig(
        sources=sources,
        sinks=sinks,
        env_name=document.text("envName", ""),
        host_name=document.text("hostName", "") or socket.gethostname(),
        listen_status=endpoint_description(
            document.endpoint("listenStatusZ"), document.port("portStatusZ", 0)
        ),
        verbosity_level=document.text("verbosityLevel", "info"),
        tsnet_hostname=document.text("tsnetHostname", ""),
    )
    for legacy in ("enableStatusZ", "enablePprof"):
        document.plain(legacy, None)
    document.finish()
    return config


def load_proxy_config(path: str | Path) -> ProxyConfig:
    """Read and check the proxy configuration file at C{path}."""
    return parse_proxy_config(load_document(path))
