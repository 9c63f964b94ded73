"""The admin listener's dashboard: a live page of channels, listeners and topics.

The page itself is three static files of this package (``index.html``,
``app.js``, ``style.css``, and ``login.html`` for a listener with a secret);
:mod:`aiengine.admin` serves them and the JSON and event-stream endpoints
they use:

- :mod:`aiengine.dashboard.feed`: the rows the page shows, the per-second
  diff and the server-sent events (``GET /api/events``).
- :mod:`aiengine.dashboard.calls`: console calls and publishes made from the
  page, through the console's own machinery.
- :mod:`aiengine.dashboard.sessions`: the cookie a browser gets after the
  login form.
"""

from __future__ import annotations

import os

__all__ = ["STATIC_FILES", "staticFile"]

#: The files the page is made of, by URL path, with their content types.
STATIC_FILES = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/index.html": ("index.html", b"text/html; charset=utf-8"),
    b"/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"/style.css": ("style.css", b"text/css; charset=utf-8"),
}

_HERE = os.path.dirname(os.path.abspath(__file__))
_cache: dict = {}


def staticFile(name: str) -> bytes:
    """The bytes of the package file ``name``, read once."""
    data = _cache.get(name)
    if data is None:
        with open(os.path.join(_HERE, name), "rb") as f:
            data = _cache[name] = f.read()
    return data
