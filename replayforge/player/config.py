"""
The player's configuration: the relay, the buckets it pulls, the sinks it feeds.

The Go-era keys (C{relayUrl}, C{sources[].relayAuthenticationBearer},
C{sinks[].params}, C{exposedPort}, ...) load unchanged.  Ours: C{listen} and
C{listenStatusZ} (Twisted endpoint strings that win over the port keys),
C{pollLimit} and C{pollWaitSecs} (how many records one C{first-batch} asks
for, and how long a relay of ours may hold that request open for new data;
a Go relay ignores the wait), C{dataDir} (where the sinks' durable queue
lives, C{player-queue.sqlite3}), C{queueMaxEvents} (per sink: past it the
buckets feeding that sink wait, leaving the records on the relay) and
C{deadLetterMaxEvents} (per sink: the oldest dead letters are forgotten
beyond it), C{caFile}, C{clientCert}, C{clientKey} and C{insecureSkipVerify}
(the relay client's TLS; the C{http} and C{notification} sinks read the same
keys from their C{params}) and C{tailscaleSocks5} (every outgoing connection
through tailscaled's SOCKS5 server; see L{replayforge.outgoing}).

With a C{tsnet} section, as in the Go player, C{listenUsingTailscale} and
C{useTsnetStatusZ} bind the exposed and status listeners to this node's
tailnet addresses, learned from the local tailscaled (C{tailscaleSocket}).

Relative paths (C{transformScript}, a sink's database) are taken from the
working directory, as the Go player and our proxy do.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from replayforge.config import Section, load_document
from replayforge.lua import LuaSettings, read_lua_settings
from replayforge.outgoing import (
    OutgoingSettings,
    Socks5Server,
    read_outgoing_settings,
    read_socks5,
)
from replayforge.player.sinks.settings import (
    READERS,
    HttpSinkSettings,
    NotificationSinkSettings,
    SinkSettings,
)
from replayforge.tailscale import DEFAULT_SOCKET

log = Logger()

DEFAULT_HOOK_INTERVAL_SECONDS = 1.0
DEFAULT_POLL_LIMIT = 1000
DEFAULT_POLL_WAIT_SECONDS = 10.0
MAX_POLL_WAIT_SECONDS = 30.0
DEFAULT_QUEUE_MAX_EVENTS = 100_000
DEFAULT_DEAD_LETTER_MAX_EVENTS = 10_000


@attrs.frozen
class PlayerSourceConfig:
    """
    One relay bucket the player pulls.

    @ivar key_path: where the source sits in the file (C{sources[1]}), for
        errors found once its script is loaded.
    @ivar sinks: the sink names every event goes to when there is no script.
    @ivar lua: how the script's runtime is built (C{luaEngine},
        C{unsafeLua}, C{luaInstructionBudget}, C{luaMaxMemoryMb}).
    """

    name: str
    bearer: str = attrs.field(repr=False)
    transform_script: Path | None
    sinks: tuple[str, ...]
    hook_interval: float
    key_path: str
    lua: LuaSettings = attrs.field(factory=LuaSettings)


@attrs.frozen
class PlayerSinkConfig:
    """
    One sink: its C{name} (what scripts emit to), its C{id} (where its API
    is served), its type and that type's settings.
    """

    name: str
    id: str
    type: str
    settings: SinkSettings
    metadata: dict[str, Any]
    key_path: str


@attrs.frozen
class PlayerConfig:
    """Everything the player reads from its file."""

    source_file: str
    relay_url: str
    relay_url_statusz: str
    env_name: str
    host_name: str
    sources: tuple[PlayerSourceConfig, ...]
    sinks: tuple[PlayerSinkConfig, ...]
    listen: str | None
    listen_status: str | None
    static_folder: Path | None
    http_username: str
    http_password: str = attrs.field(repr=False)
    poll_limit: int
    poll_wait_seconds: float
    tsnet_hostname: str
    listen_using_tailscale: bool
    data_dir: Path = Path()
    queue_max_events: int = DEFAULT_QUEUE_MAX_EVENTS
    dead_letter_max_events: int = DEFAULT_DEAD_LETTER_MAX_EVENTS
    use_tsnet: bool = False
    status_using_tailscale: bool = False
    tailscale_socket: str = DEFAULT_SOCKET
    relay_outgoing: OutgoingSettings = attrs.field(factory=OutgoingSettings)

    def sink_named(self, name: str) -> PlayerSinkConfig | None:
        """Return the sink called C{name}, if there is one."""
        for sink in self.sinks:
            if sink.name == name:
                return sink
        return None


def parse_player_config(document: Section) -> PlayerConfig:
    """Build a L{PlayerConfig} from the file's top-level mapping."""
    relay_url = document.url("relayUrl", "use relayAuthenticationBearer")
    if not relay_url.endswith("/"):
        relay_url += "/"

    socks5 = read_socks5(document)
    sinks = tuple(_read_sinks(document, socks5))
    sources = tuple(_read_sources(document, {sink.name for sink in sinks}))

    username = document.text("httpUsername", "")
    password = document.text("httpPassword", "")
    if bool(username) != bool(password):
        missing = "httpPassword" if username else "httpUsername"
        raise document.error(
            missing, "expected both httpUsername and httpPassword, or neither"
        )

    static_folder = document.text("staticFolderPath", "")
    use_tsnet = document.has("tsnet")
    tsnet = document.section("tsnet")
    listen_using_tailscale = document.boolean("listenUsingTailscale", False)
    config = PlayerConfig(
        source_file=document.source,
        relay_url=relay_url,
        relay_url_statusz=_relay_status_url(document),
        env_name=document.text("envName", ""),
        host_name=document.text("hostName", "") or socket.gethostname(),
        sources=sources,
        sinks=sinks,
        listen=_exposed_listener(document, use_tsnet and listen_using_tailscale),
        listen_status=_status_listener(document),
        static_folder=Path(static_folder) if static_folder else None,
        http_username=username,
        http_password=password,
        poll_limit=document.integer("pollLimit", DEFAULT_POLL_LIMIT, minimum=1),
        poll_wait_seconds=_poll_wait(document),
        tsnet_hostname=tsnet.text("hostname", ""),
        listen_using_tailscale=listen_using_tailscale,
        use_tsnet=use_tsnet,
        status_using_tailscale=document.boolean("useTsnetStatusZ", False),
        tailscale_socket=document.text("tailscaleSocket", DEFAULT_SOCKET),
        data_dir=Path(document.text("dataDir", "") or "."),
        queue_max_events=document.integer(
            "queueMaxEvents", DEFAULT_QUEUE_MAX_EVENTS, minimum=1
        ),
        dead_letter_max_events=document.integer(
            "deadLetterMaxEvents", DEFAULT_DEAD_LETTER_MAX_EVENTS, minimum=1
        ),
        relay_outgoing=read_outgoing_settings(document, socks5),
    )
    tsnet.finish()
    document.finish()
    return config


def load_player_config(path: str | Path) -> PlayerConfig:
    """Read and check the player configuration file at C{path}."""
    return parse_player_config(load_document(path))


def _read_sinks(
    document: Section, socks5: Socks5Server | None
) -> list[PlayerSinkConfig]:
    sinks: list[PlayerSinkConfig] = []
    names: dict[str, str] = {}
    ids: dict[str, str] = {}
    for sink in document.sections("sinks", []):
        name = sink.text("name")
        if not name:
            raise sink.error("name", "expected a non-empty sink name")
        if name in names:
            raise sink.error("name", f"sink name {name!r} is used by {names[name]}")
        names[name] = sink.path

        sink_id = sink.text("id", "") or name
        if "/" in sink_id:
            raise sink.error("id", f"expected an id without '/', got {sink_id!r}")
        if sink_id in ids:
            raise sink.error("id", f"sink id {sink_id!r} is used by {ids[sink_id]}")
        ids[sink_id] = sink.path

        kind = sink.text("type")
        reader = READERS.get(kind)
        if reader is None:
            raise sink.error(
                "type",
                f"unsupported sink type {kind!r}: expected one of "
                + ", ".join(sorted(READERS)),
            )
        params = sink.section("params")
        settings = _through_socks5(reader(params), socks5)
        params.finish()

        metadata = sink.section("metadata")
        sinks.append(
            PlayerSinkConfig(
                name=name,
                id=sink_id,
                type=kind,
                settings=settings,
                metadata=dict(metadata.raw),
                key_path=sink.path,
            )
        )
        sink.finish()
    return sinks


def _through_socks5(
    settings: SinkSettings, socks5: Socks5Server | None
) -> SinkSettings:
    """Give a sink that calls out the daemon's C{tailscaleSocks5}."""
    if socks5 is not None and isinstance(
        settings, HttpSinkSettings | NotificationSinkSettings
    ):
        outgoing = attrs.evolve(settings.outgoing, socks5=socks5)
        return attrs.evolve(settings, outgoing=outgoing)
    return settings


def _read_sources(document: Section, sink_names: set[str]) -> list[PlayerSourceConfig]:
    sources: list[PlayerSourceConfig] = []
    buckets: dict[str, str] = {}
    for source in document.sections("sources", []):
        name = source.text("name")
        if not name:
            raise source.error("name", "expected the name of a relay bucket")
        if name in buckets:
            raise source.error(
                "name", f"bucket {name!r} is already pulled by {buckets[name]}"
            )
        buckets[name] = source.path

        bearer = source.text("relayAuthenticationBearer")
        script = source.text("transformScript", "")
        targets = tuple(source.text_list("sinks", []))
        if script and targets:
            log.warn(
                "{source}: {key_path}: transformScript is set, so sinks is ignored",
                source=source.source,
                key_path=source.key_path("sinks"),
            )
            targets = ()
        if not script and not targets:
            raise source.error(
                "transformScript", "expected a transformScript or a list of sinks"
            )
        for target in targets:
            if target not in sink_names:
                raise source.error("sinks", f"no sink is named {target!r}")

        sources.append(
            PlayerSourceConfig(
                name=name,
                bearer=bearer,
                transform_script=Path(script) if script else None,
                sinks=targets,
                hook_interval=source.duration(
                    "hookInterval", DEFAULT_HOOK_INTERVAL_SECONDS
                ),
                key_path=source.path,
                lua=read_lua_settings(source),
            )
        )
        source.finish()
    return sources


def _exposed_listener(document: Section, on_tailnet: bool) -> str | None:
    listen = document.endpoint("listen")
    port = document.port("exposedPort", 0)
    address = document.text("listenAddress", "")
    if listen:
        return listen
    if not port:
        return None
    # On the tailnet the node's tailnet addresses replace listenAddress.
    if address and not on_tailnet:
        escaped = address.replace("\\", "\\\\").replace(":", "\\:")
        return f"tcp:{port}:interface={escaped}"
    return f"tcp:{port}"


def _status_listener(document: Section) -> str | None:
    listen = document.endpoint("listenStatusZ")
    if listen:
        return listen
    port = document.port("portStatusZ", 0)
    return f"tcp:{port}" if port else None


def _relay_status_url(document: Section) -> str:
    """Read C{relayUrlStatusz}, a URL or a bare C{host:port}."""
    url = document.text("relayUrlStatusz", "")
    authority = url.partition("://")[2] if "://" in url else url
    if "@" in authority.partition("/")[0]:
        raise document.error(
            "relayUrlStatusz", "user and password in the URL are not supported"
        )
    return url


def _poll_wait(document: Section) -> float:
    wait = document.number("pollWaitSecs", DEFAULT_POLL_WAIT_SECONDS, minimum=0)
    if wait > MAX_POLL_WAIT_SECONDS:
        raise document.error(
            "pollWaitSecs",
            f"expected at most {MAX_POLL_WAIT_SECONDS:g} seconds, got {wait:g}",
        )
    return wait
