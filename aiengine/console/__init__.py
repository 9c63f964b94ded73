"""The XML-call console: framing and dispatch (``protocol``), the registry of
callable classes (``registry``, ``interfaces``), the built-in classes
(``builtins``) and reply helpers (``results``)."""
