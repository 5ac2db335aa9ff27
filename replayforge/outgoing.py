"""
Build the HTTP clients the daemons call out with: TLS checked, SOCKS5 ready.

Every outgoing client (the proxy's forwarders, the player's relay client,
its C{http} and C{notification} sinks) is a twisted.web L{Agent} built here
from an L{OutgoingSettings} record, which the configuration readers fill
from these keys:

  - C{caFile}: PEM certificates to trust instead of the system's store;
  - C{clientCert} and C{clientKey}: a PEM certificate (then any
    intermediates) and its unencrypted key, presented to servers that ask
    (C{clientKey} may be left out when C{clientCert} holds both);
  - C{insecureSkipVerify: true}: accept any server certificate, with a
    warning at start naming the client;
  - C{tailscaleSocks5} (daemon level, C{"127.0.0.1:1055"}): open every
    connection through tailscaled's SOCKS5 server, which resolves the host
    names (see L{replayforge.socks5}).

Certificates are checked by default, against the system's trust store, for
the host name or address of the URL.  The files are read and checked once,
when the configuration is loaded.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import (
    URI,
    Agent,
    HostnameCachingHTTPSPolicy,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from replayforge.config import Section
from replayforge.socks5 import Socks5ClientEndpoint

log = Logger()

MAX_PEM_FILE_BYTES = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_SECONDS = 30.0
SOCKS5_KEY = "tailscaleSocks5"


@attrs.frozen
class Socks5Server:
    """Where a SOCKS5 server listens."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class OutgoingSettings:
    """
    How one client reaches its servers.

    @ivar trusted: PEM certificates to trust, from C{caFile}; empty for the
        system's store.
    @ivar client_chain: the PEM client certificate, then its intermediates.
    @ivar client_key: the PEM private key of the client certificate.
    @ivar insecure_skip_verify: accept any server certificate.
    @ivar socks5: the SOCKS5 server connections go through, if any.
    """

    trusted: tuple[bytes, ...] = ()
    client_chain: tuple[bytes, ...] = ()
    client_key: bytes = attrs.field(default=b"", repr=False)
    insecure_skip_verify: bool = False
    socks5: Socks5Server | None = None


def read_outgoing_settings(
    section: Section, socks5: Socks5Server | None = None
) -> OutgoingSettings:
    """
    Read C{caFile}, C{clientCert}, C{clientKey} and C{insecureSkipVerify}
    of one client from C{section}; C{socks5} is the daemon's.

    @raise replayforge.config.ConfigError: when a file cannot be read or
        does not hold what its key promises.
    """
    trusted: tuple[bytes, ...] = ()
    if section.text("caFile", ""):
        trusted = _certificates(section, "caFile")
    chain: tuple[bytes, ...] = ()
    key = b""
    if section.text("clientCert", ""):
        chain = _certificates(section, "clientCert")
        key_file = "clientKey" if section.text("clientKey", "") else "clientCert"
        key = _private_key(section, key_file, chain[0])
    elif section.text("clientKey", ""):
        raise section.error("clientKey", "expected clientCert beside it")
    return OutgoingSettings(
        trusted=trusted,
        client_chain=chain,
        client_key=key,
        insecure_skip_verify=section.boolean("insecureSkipVerify", False),
        socks5=socks5,
    )


def read_socks5(section: Section) -> Socks5Server | None:
    """
    Read a daemon's C{tailscaleSocks5}: C{"host:port"}, C{"[::1]:port"}.

    @return: L{None} when it is not set.
    """
    text = section.text(SOCKS5_KEY, "").strip()
    if not text:
        return None
    host, _, port = text.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise section.error(
            SOCKS5_KEY, f'expected "host:port" such as "127.0.0.1:1055", got {text!r}'
        )
    return Socks5Server(host, int(port))


def _read_pem(section: Section, key: str) -> bytes:
    path = Path(section.text(key))
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PEM_FILE_BYTES + 1)
    except OSError as error:
        raise section.error(
            key, f"cannot read {str(path)!r}: {error.strerror or error}"
        ) from None
    if len(data) > MAX_PEM_FILE_BYTES:
        raise section.error(
            key, f"expected a PEM file under {MAX_PEM_FILE_BYTES} bytes: {str(path)!r}"
        )
    return data


def _certificates(section: Section, key: str) -> tuple[bytes, ...]:
    data = _read_pem(section, key)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise section.error(
            key, f"expected PEM certificates in {section.raw[key]!r}"
        ) from None
    return tuple(
        certificate.public_bytes(serialization.Encoding.PEM)
        for certificate in certificates
    )


def _private_key(section: Section, key: str, certificate: bytes) -> bytes:
    data = _read_pem(section, key)
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise section.error(
            key, "expected an unencrypted private key; this one needs a password"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise section.error(
            key, f"expected a PEM private key in {section.raw[key]!r}"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    leaf = x509.load_pem_x509_certificate(certificate)
    if leaf.public_key().public_bytes(*spki) != private_key.public_key().public_bytes(
        *spki
    ):
        raise section.error(key, "expected the private key of clientCert")
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _QuietClientFactory(_HTTP11ClientFactory):
    """A client connection factory that does not log each connection."""

    noisy = False


def client_pool(reactor: IReactorTime, persistent: bool = True) -> HTTPConnectionPool:
    """
    Make a connection pool for one client, persistent unless told not.

    Twisted logs "Starting factory" and "Stopping factory" for every new
    connection otherwise, which drowns a daemon's own log lines.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool


@implementer(IOpenSSLClientConnectionCreator)
class _AnyServer:
    """TLS connections that present our certificate and check none."""

    def __init__(self, options: CertificateOptions, hostname: str) -> None:
        self._options = options
        self._server_name = b""
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            self._server_name = hostname.encode("idna")

    def clientConnectionForTLS(
        self, tls_protocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext())
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """
    The TLS of one client: whom it trusts and what it presents.

    Servers are checked against C{caFile}'s certificates, or the system's
    store, for the host of the URL; with C{insecureSkipVerify} not at all.
    """

    def __init__(self, settings: OutgoingSettings) -> None:
        self._insecure = settings.insecure_skip_verify
        self._trust_root = (
            trustRootFromCertificates(
                [Certificate.loadPEM(pem) for pem in settings.trusted]
            )
            if settings.trusted
            else None
        )
        self._client: PrivateCertificate | None = None
        self._extra: dict[str, object] = {}
        if settings.client_chain:
            self._client = PrivateCertificate.loadPEM(
                settings.client_chain[0] + b"\n" + settings.client_key
            )
            if len(settings.client_chain) > 1:
                self._extra["extraCertChain"] = [
                    Certificate.loadPEM(pem).original
                    for pem in settings.client_chain[1:]
                ]
        self._unchecked: CertificateOptions | None = None
        if self._insecure:
            identity: dict[str, object] = {}
            if self._client is not None:
                identity = {
                    "privateKey": self._client.privateKey.original,
                    "certificate": self._client.original,
                    **self._extra,
                }
            self._unchecked = CertificateOptions(verify=False, **identity)  # type: ignore[arg-type]  # keywords checked above

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        """Make the TLS connections to C{hostname}:C{port}."""
        host = hostname.decode("ascii")
        if self._unchecked is not None:
            return _AnyServer(self._unchecked, host)
        return optionsForClientTLS(
            host,
            trustRoot=self._trust_root,
            clientCertificate=self._client,
            extraCertificateOptions=dict(self._extra),
        )


@implementer(IAgentEndpointFactory)
class Socks5EndpointFactory:
    """Open an agent's connections through a SOCKS5 server."""

    def __init__(
        self,
        reactor: IReactorTime,
        server: Socks5Server,
        policy: IPolicyForHTTPS,
        connect_timeout: float,
    ) -> None:
        self._reactor = reactor
        self._server = server
        self._policy = policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """Connect to C{uri}'s host by name through the server, then TLS."""
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        proxy = HostnameEndpoint(
            self._reactor,
            self._server.host.encode("idna"),
            self._server.port,
            timeout=self._timeout,
        )
        endpoint: IStreamClientEndpoint = Socks5ClientEndpoint(
            proxy, uri.host.decode("ascii"), uri.port, self._reactor, self._timeout
        )
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def make_agent(
    reactor: IReactorTime,
    settings: OutgoingSettings,
    client: str,
    pool: HTTPConnectionPool,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
) -> Agent:
    """
    Build the agent of the client named C{client} (C{"sink relay"}), whose
    connections C{pool} keeps.

    Warns when the client accepts any server certificate.
    """
    if settings.insecure_skip_verify:
        log.warn(
            "{client}: insecureSkipVerify is set: the certificates of the "
            "servers it calls are not checked",
            client=client,
        )
    policy = HostnameCachingHTTPSPolicy(ClientTLSPolicy(settings))
    if settings.socks5 is None:
        return Agent(
            reactor, contextFactory=policy, pool=pool, connectTimeout=connect_timeout
        )
    log.info(
        "{client}: connecting through the SOCKS5 server at {server}",
        client=client,
        server=str(settings.socks5),
    )
    agent: Agent = Agent.usingEndpointFactory(
        reactor,
        Socks5EndpointFactory(reactor, settings.socks5, policy, connect_timeout),
        pool=pool,
    )
    return agent
