"""
HTTP basic authentication in front of every listener the player serves.

Twisted's own guard (L{twisted.web.guard}) asks for the credentials and
answers 401 with C{WWW-Authenticate}; the checker here compares them with
the configured pair in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource
from zope.interface import implementer

REALM = "replayforge-player"


@implementer(ICredentialsChecker)
class SingleUserChecker:
    """Accept exactly one username and password, compared in constant time."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, username: str, password: str) -> None:
        self._username = _digest(username.encode("utf-8"))
        self._password = _digest(password.encode("utf-8"))

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """Fire with the username when both parts match, else fail."""
        username = _as_bytes(credentials.username)
        password = _as_bytes(credentials.password)
        # Digests of equal length are compared, and both comparisons always
        # run, so timing tells neither the length of a secret nor which
        # part was wrong.
        name_matches = hmac.compare_digest(_digest(username), self._username)
        password_matches = hmac.compare_digest(_digest(password), self._password)
        if name_matches & password_matches:
            return succeed(username)
        return fail(UnauthorizedLogin("wrong username or password"))


@implementer(IRealm)
class _SingleResourceRealm:
    """Give every authenticated user the same resource."""

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def requestAvatar(
        self, avatar_id: Any, mind: Any, *interfaces: Any
    ) -> tuple[Any, IResource, Any]:
        if IResource not in interfaces:
            raise NotImplementedError("only web resources are served")
        return IResource, self._resource, lambda: None


def basic_auth(resource: IResource, username: str, password: str) -> IResource:
    """
    Wrap C{resource} so every request needs C{username} and C{password}.

    With an empty username the resource is returned as it is.
    """
    if not username:
        return resource
    portal = Portal(
        _SingleResourceRealm(resource), [SingleUserChecker(username, password)]
    )
    guarded: IResource = HTTPAuthSessionWrapper(
        portal, [BasicCredentialFactory(REALM.encode("ascii"))]
    )
    return guarded


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
