"""The page to try a model in a browser: ``GET /`` and its few static files.

The files are package data (``metafit/server/static/``), read once when the app is made
and served from memory: plain HTML, CSS and JavaScript, no build step, nothing loaded from
another host. The page itself needs no API key (it holds no data); every API call it
makes sends the key the user typed, in a header. Its Content-Security-Policy allows
scripts, styles and connections to this server only and no inline script, so a label or
file name shown on the page cannot run as code.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

from metafit.server.errors import ApiError

__all__ = ["add_page_routes", "PAGE_CSP", "STATIC_FILES", "page_paths"]

#: The static files and their media types (nothing else under ``/static/`` is served).
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}

#: The page's policy: everything from this server, images also from ``blob:`` (previews
#: of the files the user picks), no inline script or style, no framing, no form posts.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def page_paths() -> frozenset[str]:
    """The paths of the page and its files: open to requests without an API key."""
    return frozenset({"/", *(f"/static/{name}" for name in STATIC_FILES)})


def _read_static() -> dict[str, bytes]:
    folder = resources.files("metafit.server").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}


def add_page_routes(app: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /static/{name}``; left out of the OpenAPI schema
    (they are not the API)."""
    files = _read_static()

    def serve(name: str) -> Response:
        return Response(files[name], media_type=STATIC_FILES[name],
                        headers={"Content-Security-Policy": PAGE_CSP,
                                 "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        """The page to try the served model."""
        return serve("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        """One of :data:`STATIC_FILES`."""
        if name not in files:
            raise ApiError(404, "no such file")
        return serve(name)
