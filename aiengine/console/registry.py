"""The console's table of callable classes.

Features make methods callable from the console by registering an
:class:`~aiengine.console.interfaces.IConsoleClass` provider here; the
console looks each ``<xmlcall class=".." method="..">`` up by name.  Lookup
failures raise :class:`~aiengine.console.interfaces.CallError` with a message
meant for the person at the console: what was asked, what exists, and the
nearest name when the request looks like a typo.

The registry also keeps, for the admin listener's metrics
(:mod:`aiengine.admin`), how many calls of each method ended well or not
and how long they took (:attr:`CallRegistry.callStats`; the console and its
topics report each call with :meth:`CallRegistry.called`).  Only methods
that exist are counted: names that a peer makes up must not become new
label values.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from time import monotonic

from twisted.python.failure import Failure
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from aiengine.console.interfaces import CallError, ConsoleMethod, IConsoleClass

__all__ = ["CallRegistry", "suggest", "CALL_BUCKETS"]

#: Upper bounds, in seconds, of the buckets of console call durations: a
#: ping takes tens of microseconds, a request may wait for its timeout.
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FIRST_BOUND = CALL_BUCKETS[0]
# Where a callStats list keeps the sum (as a positive index: faster than -1).
_SUM = 2 + len(CALL_BUCKETS) + 1


def suggest(wanted: str, known):
    """The name in ``known`` nearest to ``wanted`` (case-insensitively), or
    ``None`` when none is close."""
    byLower = {}
    for name in known:
        byLower.setdefault(name.lower(), name)
    close = difflib.get_close_matches(wanted.lower(), list(byLower), n=1, cutoff=0.6)
    return byLower[close[0]] if close else None


class CallRegistry:
    """Console classes by name (the ``class`` attribute of an ``<xmlcall>``)."""

    def __init__(self):
        self._classes: dict[str, object] = {}
        # (class name, method name) -> ConsoleMethod, for the console's
        # every call; cleared whenever the classes change.
        self._found: dict[tuple, ConsoleMethod] = {}
        #: calls by ``(class, method)``, for every method looked up: a list
        #: of the calls that ended ``ok``, those that raised or failed
        #: (``exception``), their durations as a count per
        #: :data:`CALL_BUCKETS` bound (not cumulative) and the count above
        #: the last one, and the sum of the durations in seconds
        self.callStats: dict[tuple, list] = {}
        # ConsoleMethod -> its list in callStats: found on every call without
        # hashing the names again.
        self._stats: dict = {}

    def register(self, consoleClass) -> None:
        """Add ``consoleClass`` (an :class:`IConsoleClass` provider).

        Raises ``TypeError`` when it does not provide the interface and
        ``ValueError`` when its name is empty or already taken: both are
        programming errors that must show at start-up, not at call time.
        """
        if not IConsoleClass.providedBy(consoleClass):
            raise TypeError(f"{consoleClass!r} does not provide IConsoleClass")
        try:
            verifyObject(IConsoleClass, consoleClass)
        except Invalid as e:
            raise TypeError(f"{consoleClass!r} is not a valid IConsoleClass: {e}") from e
        name = consoleClass.name
        if not name or not isinstance(name, str):
            raise ValueError(f"{consoleClass!r} has no name")
        if name in self._classes:
            raise ValueError(f"a console class named {name!r} is already registered")
        self._classes[name] = consoleClass
        self._found.clear()

    def unregister(self, name: str) -> None:
        """Remove the class called ``name`` (``KeyError`` if unknown)."""
        del self._classes[name]
        self._found.clear()

    def classes(self) -> list:
        """Every registered class, sorted by name."""
        return [self._classes[name] for name in sorted(self._classes)]

    def get(self, className: str):
        """The class called ``className``; :class:`CallError` if unknown."""
        found = self._classes.get(className)
        if found is None:
            known = ", ".join(sorted(self._classes)) or "none"
            near = suggest(className, self._classes)
            hint = f" (did you mean '{near}'?)" if near else ""
            raise CallError(f"Unknown class '{className}'{hint}; known classes: {known}")
        return found

    def lookup(self, className: str, methodName: str) -> ConsoleMethod:
        """The method ``methodName`` of class ``className``.

        Raises :class:`CallError` naming the known classes, or the class's
        methods, and the nearest name when there is one.
        """
        found = self._found.get((className, methodName))
        if found is not None:
            return found
        consoleClass = self.get(className)
        methods = consoleClass.methods()
        found = methods.get(methodName)
        if found is None:
            near = suggest(methodName, methods)
            if near:
                hint = f"; did you mean '{near}'?"
            else:
                hint = "; its methods are: " + (", ".join(sorted(methods)) or "none")
            raise CallError(f"Class '{className}' has no method '{methodName}'{hint}")
        self._found[(className, methodName)] = found
        if found not in self._stats:
            # A class registered again under its name goes on counting.
            self._stats[found] = self.callStats.setdefault(
                (className, methodName), [0, 0] + [0] * (len(CALL_BUCKETS) + 1) + [0.0])
        return found

    @property
    def calls(self) -> dict:
        """Calls so far by ``(class, method, status)``, status ``"ok"`` or
        ``"exception"``: :attr:`callStats` read now (no status never seen)."""
        return {(className, methodName, status): stats[index]
                for (className, methodName), stats in self.callStats.items()
                for index, status in ((0, "ok"), (1, "exception")) if stats[index]}

    def called(self, method: ConsoleMethod, ok: bool, seconds: float) -> None:
        """Count a call of ``method`` (as :meth:`lookup` returned it) that
        ended (``ok``, or raised) after ``seconds``."""
        # On the console's every call: one lookup by identity, no tuple to
        # hash, and no bisect for the usual call, shorter than every bound.
        stats = self._stats[method]
        stats[0 if ok else 1] += 1
        if seconds <= _FIRST_BOUND:
            stats[2] += 1
        else:
            stats[2 + bisect_left(CALL_BUCKETS, seconds)] += 1
        stats[_SUM] += seconds

    def ended(self, result, method: ConsoleMethod, started: float):
        """A callback for the Deferred a call of ``method`` returned at
        ``started`` (``time.monotonic()``): counts it, passes ``result`` on."""
        self.called(method, not isinstance(result, Failure), monotonic() - started)
        return result
