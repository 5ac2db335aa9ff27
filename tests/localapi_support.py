"""
A fake of tailscaled's LocalAPI, served on a unix socket the test makes.

It keeps tailscaled's rules for a request over its socket: the C{Host} must
be C{local-tailscaled.sock} (or empty), and a request carrying C{Origin} or
C{Referer} is refused with 403.  It answers C{status} with the addresses it
is given (C{127.0.0.2} stands in for a tailnet address) and C{whois} from a
table of peers by IP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site


class FakeLocalAPI(Resource):
    """
    Answer C{/localapi/v0/status} and C{/localapi/v0/whois}.

    @ivar addresses: the node's tailnet addresses; empty means not logged in.
    @ivar peers: IP → the C{whois} answer for any port of that IP.
    @ivar requests: C{(path, Host, whois addr)} of each request received.
    """

    isLeaf = True

    def __init__(self, addresses: list[str] | None = None) -> None:
        super().__init__()
        self.addresses = addresses if addresses is not None else ["127.0.0.2"]
        self.peers: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.port: IListeningPort | None = None

    def add_peer(self, ip: str, node: str, login: str) -> None:
        """Make C{whois} of C{ip} name node C{node} of user C{login}."""
        self.peers[ip] = {
            "Node": {
                "Name": f"{node}.example-tailnet.ts.net.",
                "ComputedName": node,
            },
            "UserProfile": {"LoginName": login, "DisplayName": login},
        }

    def render(self, request: IRequest) -> bytes:
        host = (request.getHeader(b"host") or b"").decode()
        addr = (request.args.get(b"addr") or [b""])[0].decode()
        path = request.path.decode()
        self.requests.append((path, host, addr))
        request.setHeader(b"Content-Type", b"application/json")
        if (
            host not in ("", "local-tailscaled.sock")
            or request.getHeader(b"origin") is not None
            or request.getHeader(b"referer") is not None
        ):
            request.setResponseCode(403)
            return b"invalid localapi request\n"
        if path == "/localapi/v0/status":
            state = "Running" if self.addresses else "NeedsLogin"
            return json.dumps(
                {
                    "BackendState": state,
                    "TailscaleIPs": self.addresses,
                    "Self": {
                        "DNSName": "relay-node.example-tailnet.ts.net.",
                        "TailscaleIPs": self.addresses,
                    },
                }
            ).encode()
        if path == "/localapi/v0/whois":
            ip = addr.rpartition(":")[0].strip("[]")
            if ip not in self.peers:
                request.setResponseCode(404)
                return b"no match for IP:port\n"
            return json.dumps(self.peers[ip]).encode()
        request.setResponseCode(404)
        return b"404 not found\n"

    def serve(self, path: Path) -> IListeningPort:
        """Listen on the unix socket at C{path}; stop with L{stop}."""
        self.port = reactor.listenUNIX(str(path), Site(self))
        return self.port

    def stop(self) -> Any:
        """Stop listening, if listening."""
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def main(arguments: list[str]) -> None:
    """
    Serve a fake LocalAPI on the socket C{arguments[0]} with the tailnet
    addresses that follow, until killed: for tests of daemons run apart.
    """
    fake = FakeLocalAPI(arguments[1:])
    fake.serve(Path(arguments[0]))
    reactor.run()  # type: ignore[attr-defined]  # the global reactor


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
