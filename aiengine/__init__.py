"""aiengine: a Twisted daemon that keeps outbound channels, accepts listeners,
frames byte streams into messages, routes them through a topic broker and serves
an XML-call console."""

__version__ = "0.1.0"
