"""The web chat page: static files served at ``/``, built on the JS client (``clients/js``)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Model output is rendered by building DOM nodes, never as HTML; the policy is the second
# line of defence: no inline script or handler runs even if markup slipped through.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def _index(_request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


async def _admin(_request: Request) -> FileResponse:
    # The page itself is public (it holds no data); everything it shows needs the admin key.
    return FileResponse(STATIC_DIR / "admin.html", headers=_PAGE_HEADERS)


async def _favicon(_request: Request) -> FileResponse:
    # Browsers ask for /favicon.ico whatever the page links; a 404 is a console error in each.
    return FileResponse(
        STATIC_DIR / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
    )


def web_routes() -> list[BaseRoute]:
    """``/`` (the chat page), ``/admin`` (the operators' console), ``/favicon.ico``, and
    ``/static/`` (scripts, styles, vendored libraries, the JS client).

    ``static/client`` links to ``clients/js/src``, the npm package's own files, so the page
    and the published library are one code base; ``follow_symlink`` lets the server read it.
    """
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Route("/admin", _admin, methods=["GET", "HEAD"]),
        Route("/favicon.ico", _favicon, methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=True), name="static"),
    ]
