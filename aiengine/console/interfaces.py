"""How callable classes plug into the XML-call console.

A console class provides :class:`IConsoleClass`; the console finds it in a
:class:`~aiengine.console.registry.CallRegistry` by its ``name`` (the
``class`` attribute of an ``<xmlcall>``).  Features add classes by registering
them; the console itself never changes.  :class:`ConsoleClass` is a
convenient base: decorate methods with :func:`method`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from zope.interface import Attribute, Interface, implementer

__all__ = ["IConsoleClass", "ConsoleClass", "ConsoleMethod", "Param", "CallError",
           "CallTimeout", "Call", "method", "seconds", "boolean", "FORMAT", "wantsTable"]


class CallError(Exception):
    """A call failed in an expected way; the message is the ``<exception>`` text.

    The console logs it at info, without a traceback: the client was told.
    With ``logged=True`` it adds no line: the method has logged the event
    itself, at the level it deserves (a failed login: a warning naming the
    peer).
    """

    #: whether the failure is what the caller may expect in normal use (see
    #: :class:`CallTimeout`): logged at debug instead of info
    routine = False
    #: whether the method logged the failure itself (see above)
    logged = False

    def __init__(self, *args, logged: bool = False):
        super().__init__(*args)
        self.logged = logged


class CallTimeout(CallError):
    """A call waited as long as it was allowed (the ``timeout`` its caller
    gave, or the default) and nothing came: routine for a client that polls,
    so logged at debug only."""

    routine = True


def seconds(value, key="timeout", allowZero=False) -> float:
    """A parameter holding a number of seconds, checked: finite, and positive
    (or zero with ``allowZero``); raises :class:`CallError` otherwise."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise CallError(f"parameter '{key}' must be a number of seconds, got {value!r}")
    if not math.isfinite(result) or result < 0 or (result == 0 and not allowZero):
        raise CallError(f"parameter '{key}' must be a {'' if allowZero else 'positive '}"
                        f"number of seconds, got {value!r}")
    return result


def boolean(value, key) -> bool:
    """A parameter holding ``true`` or ``false`` (any case, whitespace
    around ignored), as media.xml's booleans; raises :class:`CallError`
    otherwise."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise CallError(f"parameter '{key}': expected true or false, got {value.strip()!r}")


class Param:
    """One parameter of a console method."""

    def __init__(self, name: str, description: str, default=None, required: bool = True):
        self.name = name
        self.description = description
        self.default = default
        self.required = required


#: The ``format`` parameter of the methods that can answer a person (see
#: :func:`wantsTable`).
FORMAT = Param("format", "xml: one element per item with its counters as attributes, "
               "for programs; table: the same as one aligned text table in a <table> "
               "element, for a person at telnet.", default="xml")


def wantsTable(call) -> bool:
    """Whether ``call`` asks for its answer as a text table (``format`` is
    ``table``) rather than as elements (``xml``, the default); raises
    :class:`CallError` for any other format."""
    value = call.params["format"]
    wanted = value.strip().lower()
    if wanted == "xml":
        return False
    if wanted == "table":
        return True
    raise CallError(f"parameter 'format' must be xml or table, got {value!r}")


class ConsoleMethod:
    """A callable method: ``function(call)`` returns the result (see :class:`Call`)."""

    def __init__(self, name: str, description: str, params, function: Callable):
        self.name = name
        self.description = description
        self.params = list(params)
        self.function = function


class Call:
    """One request being served.

    :ivar params: ``dict`` of parameter name to string value, defaults applied.
    :ivar connection: the console connection; offers ``session``,
        ``sendEvent(message)`` (stream a broker message as ``<xmlevent>``),
        ``addCleanup(callable)`` (run when the connection closes),
        ``authenticated``, ``authRequired`` and ``login(secret)`` (check a
        secret: True when it matches or none is required; on a mismatch the
        connection closes after the answer).
    :ivar engine: the running engine: ``broker``, ``channels``, ``media``...
    :ivar element: the parsed ``<xmlcall>`` element.

    A method returns ``None``, an lxml element, a list of elements, or a
    Deferred of one of those; the elements become the children of
    ``<xmlcallresult>``.  Raising (or failing the Deferred) answers
    ``status="Exception"`` with the error's message.
    """

    def __init__(self, params, connection, engine, element=None, name=None,
                 requestId=None):
        self.params = params
        self.connection = connection
        self.engine = engine
        self.element = element
        self.name = name
        self.requestId = requestId


class IConsoleClass(Interface):
    """A class of methods callable from the console."""

    name = Attribute("The xmlcall 'class' attribute selecting it, e.g. 'Engine'.")
    description = Attribute("One line saying what the class is for.")

    def methods():
        """A mapping of method name to :class:`ConsoleMethod`; fixed once the
        class is registered (the registry remembers what it found)."""


def method(description: str, *params: Param, name: Optional[str] = None):
    """Mark a :class:`ConsoleClass` method as callable from the console."""

    def decorate(function):
        function._consoleMethod = (name or function.__name__, description, params)
        return function

    return decorate


@implementer(IConsoleClass)
class ConsoleClass:
    """Base for console classes: collects the methods marked with :func:`method`."""

    name: str = ""
    description: str = ""

    def methods(self):
        # Built once per instance: the console looks methods up on every call.
        cached = self.__dict__.get("_methods")
        if cached is not None:
            return cached
        found = self.__dict__["_methods"] = {}
        for attr in dir(type(self)):
            function = getattr(type(self), attr, None)
            spec = getattr(function, "_consoleMethod", None)
            if spec is not None:
                mname, description, params = spec
                found[mname] = ConsoleMethod(mname, description, params,
                                             getattr(self, attr))
        return found
