"""The console's table of callable classes.

Features make methods callable from the console by registering an
:class:`~aiengine.console.interfaces.IConsoleClass` provider here; the
console looks each ``<xmlcall class=".." method="..">`` up by name.  Lookup
failures raise :class:`~aiengine.console.interfaces.CallError` with a message
meant for the person at the console: what was asked, what exists, and the
nearest name when the request looks like a typo.
"""

from __future__ import annotations

import difflib

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from aiengine.console.interfaces import CallError, ConsoleMethod, IConsoleClass

__all__ = ["CallRegistry", "suggest"]


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
        return found
