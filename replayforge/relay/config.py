"""
The relay's configuration: buckets, their tokens and caps, and listeners.

The Go-era keys (C{port}, C{portStatusZ}, C{buckets.*.auth},
C{dbMaxSizeKb}, C{tls}) load unchanged; C{listen} and C{listenStatusZ}
take Twisted endpoint strings and win over the port keys.  With
C{useTailnet} the API listener is bound to this node's tailnet addresses,
learned from the local tailscaled (C{tailscaleSocket}), unless C{listen}
names its own interface; per bucket,
C{allowedTailnetNodes} and C{allowedTailnetUsers} (ours) admit only those
tailnet peers, on top of the bearer token.  C{staleHostSecs}
(ours) is how long a host may stay silent before the dashboard marks it stale.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from replayforge.config import Section, load_document
from replayforge.tailscale import DEFAULT_SOCKET
from replayforge.web import endpoint_description

DEFAULT_PORT = 8081
DEFAULT_DB_MAX_SIZE_KB = 1024 * 1024
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Proxies and players report every minute: three missed reports is stale.
DEFAULT_STALE_HOST_SECONDS = 180
BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@attrs.frozen
class BucketConfig:
    """One bucket: who may use it, how large it may grow, how long it keeps."""

    name: str
    auth: str = attrs.field(repr=False)
    db_max_size_kb: int
    ttl_seconds: int
    allowed_tailnet_nodes: tuple[str, ...] = ()
    allowed_tailnet_users: tuple[str, ...] = ()

    @property
    def needs_tailnet_identity(self) -> bool:
        """Whether a client must also be an allowed tailnet node or user."""
        return bool(self.allowed_tailnet_nodes or self.allowed_tailnet_users)

    @property
    def max_bytes(self) -> int | None:
        """The size cap in bytes, or L{None} when the bucket has none."""
        return self.db_max_size_kb * 1024 if self.db_max_size_kb else None


@attrs.frozen
class RelayConfig:
    """Everything the relay reads from its file."""

    buckets: dict[str, BucketConfig]
    listen: str
    listen_status: str | None
    data_dir: Path
    max_batch: int
    max_body_bytes: int
    use_tailnet: bool
    tailnet_hostname: str
    tailscale_socket: str = DEFAULT_SOCKET
    stale_host_seconds: int = DEFAULT_STALE_HOST_SECONDS


def parse_relay_config(document: Section) -> RelayConfig:
    """Build a L{RelayConfig} from the file's top-level mapping."""
    port = document.port("port", DEFAULT_PORT)
    listen = endpoint_description(document.endpoint("listen"), port)
    if listen is None:
        raise document.error("port", "expected a port number above 0")
    status_listen = endpoint_description(
        document.endpoint("listenStatusZ"), document.port("portStatusZ", 0)
    )

    buckets: dict[str, BucketConfig] = {}
    for name, bucket in document.named_sections("buckets"):
        if not BUCKET_NAME.match(name):
            raise document.error(
                f"buckets.{name}",
                "expected a bucket name of letters, digits, '.', '_' or '-'",
            )
        auth = bucket.text("auth")
        if not auth:
            raise bucket.error("auth", "expected a non-empty token")
        buckets[name] = BucketConfig(
            name=name,
            auth=auth,
            db_max_size_kb=bucket.integer(
                "dbMaxSizeKb", DEFAULT_DB_MAX_SIZE_KB, minimum=0
            ),
            ttl_seconds=bucket.integer("tls", 0, minimum=0),
            allowed_tailnet_nodes=tuple(bucket.text_list("allowedTailnetNodes", [])),
            allowed_tailnet_users=tuple(bucket.text_list("allowedTailnetUsers", [])),
        )
        bucket.finish()
    if not buckets:
        raise document.error("buckets", "expected at least one bucket")

    config = RelayConfig(
        buckets=buckets,
        listen=listen,
        listen_status=status_listen,
        data_dir=Path(document.text("dataDir", ".")),
        max_batch=document.integer("maxBatch", DEFAULT_MAX_BATCH, minimum=1),
        max_body_bytes=document.integer(
            "maxBodyBytes", DEFAULT_MAX_BODY_BYTES, minimum=1024
        ),
        use_tailnet=document.boolean("useTailnet", False),
        tailnet_hostname=document.text("tailnetHostname", ""),
        tailscale_socket=document.text("tailscaleSocket", DEFAULT_SOCKET),
        stale_host_seconds=document.integer(
            "staleHostSecs", DEFAULT_STALE_HOST_SECONDS, minimum=1
        ),
    )
    document.finish()
    return config


def load_relay_config(path: str | Path) -> RelayConfig:
    """Read and check the relay configuration file at C{path}."""
    return parse_relay_config(load_document(path))
