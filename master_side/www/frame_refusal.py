"""Pages that refuse to be framed: what the plugin serves and, unless the plugin's configuration says
``frame_index=False``, Buildbot's index (the page every ``#/slaveshell/...`` address loads), answer with
``Content-Security-Policy: frame-ancestors 'none'`` and ``X-Frame-Options: DENY``, so that a page elsewhere (another
port or subdomain of the same site included) cannot show them in a frame and lure clicks or keys into a shell.

Only ``frame-ancestors`` is set in the policy: Buildbot's own scripts and styles are left as they are. The page
itself also refuses to open a shell when it finds itself in a frame (``static/scripts.js``), for a proxy that strips
the headers or a master with ``frame_index=False``.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import resource, static

log = Logger()

HEADERS = ((b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY"))


def refuse_framing(request: Any) -> None:
    for name, value in HEADERS:
        request.setHeader(name, value)


class UnframedFile(static.File):
    """The plugin's static files (and their children: `createSimilarFile` keeps the class), unframeable; no
    directory listing."""

    def render(self, request: Any) -> Any:
        refuse_framing(request)
        return super().render(request)

    def directoryListing(self) -> resource.Resource:
        return NoListing()


class NoListing(resource.Resource):
    """404 for the plugin's directory, unframeable."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        refuse_framing(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found\n"


class UnframedIndex(resource.Resource):
    """Buildbot's index resource, answered as it answers, with the headers."""

    def __init__(self, index: Any) -> None:
        super().__init__()
        self.index = index
        self.isLeaf = getattr(index, "isLeaf", False)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        return self.index.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        refuse_framing(request)
        return self.index.render(request)


def wrap_index(root: Any) -> bool:
    """Buildbot's index (``root``'s child ``b""``) refuses framing; True when it does (now or already)."""
    children = getattr(root, "children", None)
    index = children.get(b"") if isinstance(children, dict) else None
    if isinstance(index, UnframedIndex):
        return True
    if index is None or not callable(getattr(index, "render", None)):
        return False
    root.putChild(b"", UnframedIndex(index))
    log.info("slaveshell: Buildbot's index refuses to be framed (master_side.www.frame_refusal)")
    return True
