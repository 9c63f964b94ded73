"""aiengine: a Twisted daemon that keeps outbound channels, accepts listeners,
frames byte streams into messages, routes them through a topic broker and serves
an XML-call console.

The public names, for embedding aiengine in a program of your own (see
docs/embedding.md)::

    from aiengine import Engine, Broker, Message, load, parse, ConfigError

:mod:`aiengine.testing` has test doubles for code that uses them.
"""

__version__ = "0.1.0"

__all__ = ["Engine", "Broker", "Message", "load", "parse", "ConfigError", "__version__"]

_LAZY = {
    "Engine": "aiengine.engine",
    "Broker": "aiengine.broker",
    "Message": "aiengine.broker",
    "load": "aiengine.config",
    "parse": "aiengine.config",
    "ConfigError": "aiengine.config",
}


def __getattr__(name):
    # Imported on first use: "import aiengine" stays cheap, and the modules
    # that read __version__ while they load find it defined.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiengine' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
