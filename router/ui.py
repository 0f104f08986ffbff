"""The web UI at ``/ui/``: the page's built files (``make ui`` writes them to ``router/ui_dist/``).

The page is a client of the admin API and holds no logic of its own (its
sources, the build and the tests: ``ui/``, ``tests/test_ui.py``). This module
only serves files: no Node.js at run time, nothing fetched from elsewhere.

* ``index.html`` is revalidated on every load (``no-cache`` with an ETag), so a
  new build shows at once; the scripts and styles it names carry a content hash
  in their names and are cached for good (``immutable``).
* A path with no file extension that names no file is one of the page's own
  routes: it gets ``index.html``. A missing file with an extension is a 404.
* Without a build every path answers 503 ``{"error": "the UI is not built: run make ui"}``.

The admin API keeps its own guards (:func:`router.admin.browser_refusal`); the
page is same-origin with it, so its calls pass them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from .proto.errors import shown

#: Where ``ui/build.mjs`` writes the built page.
DIST = Path(__file__).resolve().parent / "ui_dist"
INDEX = "index.html"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
#: The page talks to its own origin only; inline scripts and framing are refused, so an
#: injected string can neither run nor dress the admin page up inside another site.
_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=_HEADERS)


def _hashed(name: str) -> bool:
    """True for the build's content-hashed names (``app-5LQ2ZKXA.js``): safe to cache for good."""
    stem = name.rsplit(".", 1)[0]
    return "-" in stem and len(stem.rsplit("-", 1)[1]) >= 8


class UIFiles:
    """The handler of ``GET /ui/{path}``: files of ``root`` (the build), ``index.html`` for the page's routes.

    Args:
        root: the built page's directory (:data:`DIST`).
    """

    def __init__(self, root: Path = DIST) -> None:
        self.root = root.resolve()

    def _file(self, rel: str) -> Path | None:
        """The file ``rel`` names inside the build, or None (also for a hidden or escaping name)."""
        parts = [p for p in rel.split("/") if p]
        if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None
        path = self.root.joinpath(*parts) if parts else self.root / INDEX
        try:
            path = path.resolve()
        except (OSError, ValueError):
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one file of the build; 503 when there is no build, 404 for a missing asset."""
        if not (self.root / INDEX).is_file():
            return _json_error(503, "the UI is not built: run make ui")
        rel = request.match_info.get("path", "")
        path = self._file(rel)
        if path is None:
            last = rel.rsplit("/", 1)[-1]
            if "." in last:
                return _json_error(404, f"no such file in the UI: {shown(rel)}")
            path = self.root / INDEX  # a route of the page itself (#/models/fraud works as /ui/models/fraud)
        return self._send(request, path)

    def _send(self, request: web.Request, path: Path) -> web.Response:
        try:
            body = path.read_bytes()  # a few tens of KB at most, and only people load the page
        except OSError:
            return _json_error(503, "the UI is not built: run make ui")
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        headers = {**_HEADERS, "ETag": etag,
                   "Cache-Control": _IMMUTABLE if _hashed(path.name) else "no-cache"}
        ctype = _TYPES.get(path.suffix, "application/octet-stream")
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, "Content-Type": ctype})


async def _to_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def add_routes(app: web.Application, root: Path = DIST) -> None:
    """Serve the built page of ``root`` at ``/ui/`` on ``app`` (``/ui`` redirects there)."""
    files = UIFiles(root)
    app.router.add_get("/ui", _to_slash)
    app.router.add_get("/ui/{path:.*}", files.handle)
