"""Browser sessions of an admin listener with a secret.

A browser cannot add ``Authorization: Bearer`` to the page's own loads or
to an ``EventSource``, so the login form (``POST /login``) trades the
secret, once, for a random session token in an ``HttpOnly``,
``SameSite=Strict`` cookie.  The token is not the secret: a leaked cookie
dies with its session (:attr:`Sessions.lifetime`, a logout, a restart of
the listener), and the secret never rides along with every request.

Only SHA-256 digests of the tokens are kept, so looking one up tells
nothing about the others through timing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict

__all__ = ["Sessions"]


def _key(token) -> bytes:
    if isinstance(token, str):
        token = token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(token).digest()


class Sessions:
    """Session tokens and when they expire.

    :param clock: an ``IReactorTime``.
    """

    #: seconds a session lasts from its login
    lifetime = 12 * 3600.0
    #: sessions kept at most (the oldest go first)
    size = 1000

    def __init__(self, clock):
        self.clock = clock
        self._expiry: OrderedDict = OrderedDict()  # digest -> expires at

    def __len__(self):
        return len(self._expiry)

    def create(self) -> str:
        """A new session's token (URL-safe text)."""
        token = secrets.token_urlsafe(32)
        self._expiry[_key(token)] = self.clock.seconds() + self.lifetime
        while len(self._expiry) > self.size:
            self._expiry.popitem(last=False)
        return token

    def valid(self, token) -> bool:
        """Whether ``token`` is a live session's."""
        if not token:
            return False
        key = _key(token)
        expires = self._expiry.get(key)
        if expires is None:
            return False
        if self.clock.seconds() >= expires:
            del self._expiry[key]
            return False
        return True

    def end(self, token) -> None:
        """Forget ``token``'s session (a logout)."""
        if token:
            self._expiry.pop(_key(token), None)
