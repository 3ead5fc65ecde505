"""How the API process serves the web client: the page and its versioned files, their cache
and CSP headers, the API's own headers left as they were, and the switch that turns it off."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gemini_backend.config import Settings
from gemini_backend.core.middleware import SECURITY_HEADERS
from gemini_backend.web.router import LONG_CACHE, PAGE_CSP, STATIC_DIR, WebClient
from tests.conftest import _settings

ASSET = re.compile(r'(?:src|href)="(/static/[0-9a-f]{16}/[^"]+)"')


async def test_the_page_is_served_with_its_csp_and_revalidated(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-frame-options"] == "DENY"
    assert "{{STATIC}}" not in page.text
    # No inline script or style in the page: the CSP would refuse them.
    assert "<style" not in page.text
    assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None
    assert " style=" not in page.text


async def test_versioned_files_are_cached_for_a_year(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assets = ASSET.findall(page)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"app.js", "app.css", "purify.min.js"}
    for url in assets:
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == LONG_CACHE
        assert response.headers["content-security-policy"] == PAGE_CSP
    version = assets[0].split("/")[2]
    module = await client.get(f"/static/{version}/vendor/marked.esm.js")
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    assert module.content == (STATIC_DIR / "vendor" / "marked.esm.js").read_bytes()


async def test_an_earlier_version_gets_todays_files_uncached(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/0000000000000000/app.js")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path", ["/static/x/index.html", "/static/x/vendor/VERSIONS", "/static/x/../config.py"]
)
async def test_only_the_client_files_are_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_the_api_keeps_its_own_headers(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "access-control-allow-origin" not in health.headers  # same origin: no CORS


def test_the_version_follows_every_file(tmp_path: Path) -> None:
    for name in ("index.html", "app.js"):
        (tmp_path / name).write_text(name + "{{STATIC}}")
    first = WebClient.load(tmp_path)
    assert first.page == f"index.html/static/{first.version}".encode()
    (tmp_path / "app.js").write_text("changed")
    assert WebClient.load(tmp_path).version != first.version


class TestTurnedOff:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"web_client_enabled": False}

    async def test_nothing_is_served_at_the_root(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/static/x/app.js")).status_code == 404


def test_checkout_and_the_portal_return_to_the_client() -> None:
    on: Settings = _settings()
    assert on.success_url == "http://127.0.0.1:8000/?checkout=success"
    assert on.cancel_url == "http://127.0.0.1:8000/?checkout=cancelled"
    assert on.portal_return_target == "http://127.0.0.1:8000/?billing=return"
    off = _settings(web_client_enabled=False)
    assert off.success_url == "http://127.0.0.1:8000/subscribe/success"
    assert off.portal_return_target == "http://127.0.0.1:8000/subscribe/return"
