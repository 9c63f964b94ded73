"""Console class ``Bridges``: the engine's MQTT bridges, their state and counters."""

from __future__ import annotations

from lxml import etree

from aiengine.console.interfaces import CallError, ConsoleClass, Param, method
from aiengine.console.registry import suggest

__all__ = ["BridgesConsole", "registerBridges"]


def _bridge(engine, name):
    bridges = getattr(engine, "bridges", {})
    bridge = bridges.get(name)
    if bridge is None:
        message = f"Unable to find bridge by name={name}"
        near = suggest(name, list(bridges)) if bridges else None
        if near is not None:
            message += f" (did you mean '{near}'?)"
        message += (f"; known bridges: {', '.join(sorted(bridges))}" if bridges
                    else "; there are no bridges")
        raise CallError(message)
    return bridge


class BridgesConsole(ConsoleClass):
    """Console class ``Bridges``."""

    name = "Bridges"
    description = "Bridges to MQTT brokers: state and counters."

    @method("One <bridge name state/> per running bridge (state connected when up).")
    def list(self, call):
        return [etree.Element("bridge", name=name, state=bridge.state)
                for name, bridge in sorted(getattr(call.engine, "bridges", {}).items())]

    @method("One bridge's state and counters, as attributes of <bridge>.",
            Param("name", "Name of a configured bridge."))
    def status(self, call):
        status = _bridge(call.engine, call.params["name"]).status()
        return etree.Element("bridge", {key: str(value) for key, value in status.items()})


def registerBridges(registry):
    """Register ``Bridges``."""
    registry.register(BridgesConsole())
