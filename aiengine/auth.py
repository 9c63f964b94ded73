"""Shared-secret checks for the console and the listeners."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SharedSecret"]


class SharedSecret:
    """A shared secret (surrounding whitespace stripped) that candidates are
    checked against in constant time.  It is never logged or shown."""

    __slots__ = ("_digest",)

    def __init__(self, secret):
        secret = _bytes(secret).strip()
        if not secret:
            raise ValueError("an empty secret would let anybody in")
        self._digest = _digest(secret)

    def matches(self, candidate) -> bool:
        """Whether ``candidate`` (bytes or str; whitespace around it ignored) is it."""
        # Fixed-length digests: the comparison tells neither where a guess
        # went wrong nor how long the secret is.
        return hmac.compare_digest(_digest(_bytes(candidate or b"").strip()), self._digest)

    def __repr__(self):
        return "<SharedSecret (hidden)>"


def _bytes(value) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()
