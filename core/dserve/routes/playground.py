"""GET /playground: a page that watches the denoising live (docs/playground.md).

Plain HTML, CSS and JavaScript committed in `dserve/playground/`, served from the package:
nothing is built at install time and nothing is fetched from another host. The page's
Content-Security-Policy allows only this server, so it cannot load or send anything elsewhere.
The three files are public (`dserve.middleware.PLAYGROUND_PATHS`): a browser opening a page
sends no Bearer header; the API calls the page makes carry the key typed into it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

_FILES = {
    "/playground": ("index.html", "text/html; charset=utf-8"),
    "/playground/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/playground/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own page
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("dserve") / "playground" / name).read_bytes()


async def playground(request: Request) -> Response:
    name, media_type = _FILES[request.url.path]
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


PATHS = tuple(_FILES)
MEDIA_TYPES = {path: media_type.split(";")[0] for path, (_, media_type) in _FILES.items()}
