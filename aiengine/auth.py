"""Shared-secret checks for the console and the listeners."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections import OrderedDict

from twisted.logger import Logger

__all__ = ["SharedSecret", "LoginThrottle", "readSecretFile", "readSecret"]

_log = Logger(namespace="aiengine.auth")


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


class LoginThrottle:
    """Failed logins per peer address, to slow down guessing.

    After a failed login an address must wait before it may try again:
    ``first`` seconds, doubling with each failure in a row, at most ``most``.
    A try before then is refused without checking the secret.  An address
    is forgotten after a successful login, or ``forget`` seconds after its
    last failure; at most ``size`` addresses are remembered (the oldest go).

    :param clock: an ``IReactorTime``.
    """

    def __init__(self, clock, first=0.5, most=60.0, forget=600.0, size=10000):
        self.clock = clock
        self.first = first
        self.most = most
        self.forget = forget
        self.size = size
        #: tries refused because their address had to wait
        self.throttled = 0
        # address -> (failures in a row, may try again at, last failure at)
        self._peers: OrderedDict = OrderedDict()

    def retryAfter(self, address) -> float:
        """Seconds ``address`` must still wait (0: it may try now).  A try
        refused so is counted in :attr:`throttled`."""
        entry = self._entry(address)
        if entry is None:
            return 0.0
        wait = entry[1] - self.clock.seconds()
        if wait <= 0:
            return 0.0
        self.throttled += 1
        return wait

    def failed(self, address) -> float:
        """A failed login from ``address``; returns how long it must wait."""
        entry = self._entry(address)
        failures = 1 if entry is None else entry[0] + 1
        now = self.clock.seconds()
        wait = min(self.first * 2 ** (failures - 1), self.most)
        peers = self._peers
        peers[address] = (failures, now + wait, now)
        peers.move_to_end(address)
        if len(peers) > self.size:
            peers.popitem(last=False)
        return wait

    def succeeded(self, address) -> None:
        """A right login from ``address``: its failures are forgotten."""
        self._peers.pop(address, None)

    def _entry(self, address):
        entry = self._peers.get(address)
        if entry is not None and self.clock.seconds() - entry[2] >= self.forget:
            del self._peers[address]
            return None
        return entry


def readSecretFile(path: str) -> bytes:
    """The shared secret in file ``path``, surrounding whitespace stripped.

    Raises ``ValueError`` saying why when the file cannot be read, holds
    nothing but whitespace, or holds what no client could type the same
    way: a byte order mark, a NUL, bytes that are not UTF-8.  Logs a warning
    when other users may read the file.  The secret itself never appears in
    a message.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the secret file {path}: {e.strerror}") from None
    secret = raw.strip()
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ValueError(f"the secret file {path} starts with a byte order mark (save "
                         f"it as UTF-8 without one)")
    if b"\x00" in secret:
        raise ValueError(f"the secret file {path} holds a NUL byte")
    try:
        secret.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the secret file {path} is not UTF-8 (byte {e.start})") from None
    if mode & 0o077:
        _log.warn("the secret file {path} can be read by other users (mode {mode:o}): "
                  "chmod 600 it", path=path, mode=stat.S_IMODE(mode))
    return secret


def readSecret(path: str, listener: str) -> bytes:
    """:func:`readSecretFile` for a listener's ``auth.secret-file``: raises
    :class:`~aiengine.config.ConfigError` naming the listener."""
    from aiengine.config import ConfigError
    try:
        return readSecretFile(path)
    except ValueError as e:
        raise ConfigError(str(e), element=f"listener '{listener}'",
                          prop="auth.secret-file") from None
