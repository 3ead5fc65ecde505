"""Serves the web client: the page at `/` and its files under `/static/<version>/<path>`.

The files are read once, at start-up. `<version>` is a digest of all of them, so a versioned
URL never changes content and is cached for a year; the page itself is revalidated on every
load (`no-cache`) and names the current version. Both carry the page's own strict
Content-Security-Policy instead of the API's (core/middleware.py keeps a route's own headers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from gemini_backend.core.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
# No inline script or style, no eval: every script and style sheet is a file of this origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
LONG_CACHE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
VERSION_PLACEHOLDER = "{{STATIC}}"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class WebClient:
    """The client's files, read from `root`: the page (with its asset root filled in), the
    assets by path, and their common version."""

    page: bytes
    assets: dict[str, Asset]
    version: str
    share_page: bytes | None  # share.html, if there: a share link's read-only page

    @classmethod
    def load(cls, root: Path = STATIC_DIR) -> WebClient:
        assets: dict[str, Asset] = {}
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            media_type = MEDIA_TYPES.get(path.suffix)
            if media_type is None or not path.is_file():
                continue  # index.html, licences and notes are not served as assets
            name = path.relative_to(root).as_posix()
            body = path.read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
            assets[name] = Asset(body, media_type)
        version = digest.hexdigest()[:16]
        static = f"/static/{version}"
        page = (root / "index.html").read_text(encoding="utf-8")
        share = root / "share.html"
        share_page = share.read_text(encoding="utf-8") if share.exists() else None
        return cls(
            page.replace(VERSION_PLACEHOLDER, static).encode(),
            assets,
            version,
            share_page.replace(VERSION_PLACEHOLDER, static).encode() if share_page else None,
        )


def build_router(client: WebClient) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def web_page() -> Response:
        return Response(
            client.page,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @router.get("/s/{share_id}")
    async def share_page(share_id: str) -> Response:
        # The same page for every id: it fetches GET /share/{id}, which checks the id.
        if client.share_page is None:
            raise NotFound()
        return Response(
            client.share_page,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Cache-Control": "no-cache",
                "X-Robots-Tag": "noindex",
            },
        )

    @router.get("/static/{version}/{path:path}")
    async def web_asset(version: str, path: str) -> Response:
        asset = client.assets.get(path)
        if asset is None:
            raise NotFound()
        # A page of an earlier version (a deploy since it loaded) still gets today's files,
        # but not cached as that version's.
        cache = LONG_CACHE if version == client.version else "no-cache"
        return Response(
            asset.body,
            media_type=asset.media_type,
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": cache},
        )

    return router
