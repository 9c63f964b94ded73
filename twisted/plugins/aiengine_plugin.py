"""twistd plugin: ``twistd aiengine -c media.xml``. All logic lives in aiengine.tap."""

from twisted.application.service import ServiceMaker

aiengine = ServiceMaker(
    "aiengine",
    "aiengine.tap",
    "Network daemon: channels, listeners, topic broker and XML-call console",
    "aiengine",
)
