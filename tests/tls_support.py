"""
Certificates, TLS listeners and a SOCKS5 server for the outgoing-client
tests.

L{make_authority} writes a private certificate authority and the
certificates it signs (a server for C{127.0.0.1}, C{::1} and C{localhost}, a
client) as PEM files into a folder; L{listen_tls} serves a twisted.web
resource over TLS on a free loopback port, optionally asking for a client
certificate; L{FakeSocks5Server} is a loopback SOCKS5 server that knows a
few made-up host names and records what it was asked.
"""

from __future__ import annotations

import datetime
import ipaddress
import struct
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attrs.frozen
class Authority:
    """
    PEM files of a test certificate authority and what it signed.

    @ivar ca: the authority's certificate.
    @ivar server_cert: a server certificate for 127.0.0.1, ::1, localhost.
    @ivar client_cert: a client certificate (C{CN=player}).
    @ivar client_both: the client certificate followed by its key.
    """

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_both: Path

    def server_options(self, require_client: bool = False) -> CertificateOptions:
        """TLS options of a server using C{server_cert}."""
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, self.server_key.read_bytes())
        cert = crypto.load_certificate(
            crypto.FILETYPE_PEM, self.server_cert.read_bytes()
        )
        if not require_client:
            return CertificateOptions(privateKey=key, certificate=cert)
        ca = crypto.load_certificate(crypto.FILETYPE_PEM, self.ca.read_bytes())
        return CertificateOptions(
            privateKey=key,
            certificate=cert,
            verify=True,
            caCerts=[ca],
            requireCertificate=True,
        )


def make_authority(
    folder: Path, name: str = "Test CA", server_names: list[str] | None = None
) -> Authority:
    """
    Write a new authority and its server and client certificates.

    @param server_names: the names in the server certificate; by default
        127.0.0.1, ::1 and localhost.
    """
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    alternative_names: list[x509.GeneralName] = []
    for server_name in server_names or ["localhost", "127.0.0.1", "::1"]:
        try:
            address = ipaddress.ip_address(server_name)
        except ValueError:
            alternative_names.append(x509.DNSName(server_name))
        else:
            alternative_names.append(x509.IPAddress(address))
    server_cert, server_key = issue(
        "server", ExtendedKeyUsageOID.SERVER_AUTH, alternative_names
    )
    client_cert, client_key = issue("player", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem),
        "ca_key": _pem_key(ca_key),
        "server_cert": server_cert.public_bytes(pem),
        "server_key": _pem_key(server_key),
        "client_cert": client_cert.public_bytes(pem),
        "client_key": _pem_key(client_key),
        "client_both": client_cert.public_bytes(pem) + _pem_key(client_key),
    }
    paths = {}
    for field, data in files.items():
        path = folder / f"{field.replace('_', '-')}.pem"
        path.write_bytes(data)
        paths[field] = path
    return Authority(**paths)


def listen_tls(
    resource: Resource, authority: Authority, require_client: bool = False
) -> tuple[IListeningPort, WrappingFactory]:
    """
    Serve C{resource} over TLS on a free port of 127.0.0.1.

    @return: the port, and the factory whose C{protocols} are the open
        connections.
    """
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None
    tracked = WrappingFactory(site)
    tracked.noisy = False
    port: IListeningPort = reactor.listenSSL(
        0, tracked, authority.server_options(require_client), interface="127.0.0.1"
    )
    return port, tracked


async def closed(factory: WrappingFactory, rounds: int = 500) -> None:
    """Wait (boundedly) until every connection of C{factory} is closed."""
    for _ in range(rounds):
        if not factory.protocols:
            return
        await deferLater(reactor, 0.01, lambda: None)
    for protocol in list(factory.protocols):
        protocol.transport.abortConnection()


@attrs.define
class SocksRequest:
    """One C{CONNECT} the fake SOCKS5 server received."""

    address_type: int
    host: str
    port: int


class _SocksSession(Protocol):
    """One client of L{FakeSocks5Server}: handshake, then relay bytes."""

    def __init__(self, server: FakeSocks5Server) -> None:
        self._server = server
        self._buffer = b""
        self._greeted = False
        self._peer: ProxyClient | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.transport.write(data)
            return
        self._buffer += data
        if not self._greeted:
            if len(self._buffer) < 2 or len(self._buffer) < 2 + self._buffer[1]:
                return
            methods = self._buffer[2 : 2 + self._buffer[1]]
            self._buffer = self._buffer[2 + self._buffer[1] :]
            if 0 not in methods:
                self.transport.write(b"\x05\xff")
                self.transport.loseConnection()
                return
            self._greeted = True
            self.transport.write(b"\x05\x00")
        self._read_request()

    def _read_request(self) -> None:
        data = self._buffer
        if len(data) < 5:
            return
        kind = data[3]
        if kind == 3:
            end = 5 + data[4]
            host = data[5:end].decode("ascii")
        elif kind == 1:
            end = 8
            host = str(ipaddress.ip_address(data[4:8]))
        else:
            end = 20
            host = str(ipaddress.ip_address(data[4:20]))
        if len(data) < end + 2:
            return
        (port,) = struct.unpack("!H", data[end : end + 2])
        self._buffer = data[end + 2 :]
        self._server.requests.append(SocksRequest(kind, host, port))
        target = self._server.names.get(host)
        if target is None:
            # Host unreachable: the server knows no such name.
            self.transport.write(b"\x05\x04\x00\x01" + b"\x00" * 6)
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()
        factory = ProxyClientFactory()
        factory.noisy = False
        factory.setServer(self)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", target)
        endpoint.connect(factory).addCallbacks(self._connected, self._unreachable)

    def setPeer(self, peer: ProxyClient) -> None:
        """Called by the outgoing side once it is connected."""
        self._peer = peer

    def _connected(self, peer: ProxyClient) -> None:
        self._peer = peer
        self.transport.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        if self._buffer:
            peer.transport.write(self._buffer)
            self._buffer = b""
        self.transport.resumeProducing()

    def _unreachable(self, failure: Failure) -> None:
        self.transport.write(b"\x05\x05\x00\x01" + b"\x00" * 6)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._peer is not None and self._peer.transport is not None:
            self._peer.transport.loseConnection()


class FakeSocks5Server(Factory):
    """
    A SOCKS5 server on loopback that resolves only the names it was given.

    @ivar names: host name to a port of 127.0.0.1.
    @ivar requests: every C{CONNECT} received, in order.
    """

    noisy = False

    def __init__(self, names: dict[str, int]) -> None:
        self.names = names
        self.requests: list[SocksRequest] = []

    def buildProtocol(self, addr: object) -> _SocksSession:
        return _SocksSession(self)

    def listen(self) -> IListeningPort:
        """Listen on a free port of 127.0.0.1."""
        port: IListeningPort = reactor.listenTCP(0, self, interface="127.0.0.1")
        return port
