"""A share link's page (/s/<id>) in a real browser: the snapshot rendered read-only, model
output as sanitised Markdown, hostile text shown as text, the page's CSP, and a revoked link
said to be gone."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from gemini_backend.web.router import PAGE_CSP
from tests.web.conftest import PageLog

CHUNK_DELAY_MS = 0  # the reply is made before the page opens
HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script> **not bold**"
GONE_LOG = "Failed to load resource: the server responded with a status of 404"


def _shared_room(base: str) -> tuple[str, dict[str, str], str]:
    """Through the API: a user, a room with one exchange, its share link; (share id, auth,
    page URL)."""
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as api:
        number = "+919812345678"
        otp = api.post("/auth/send-otp", json={"mobile_number": number}).json()["otp"]
        tokens = api.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp}).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        room = api.post("/chatroom", json={"name": "Shared <b>room</b>"}, headers=auth).json()
        sent = api.post(
            f"/chatroom/{room['id']}/message", json={"content": HOSTILE}, headers=auth
        ).json()
        with api.stream("GET", sent["stream_url"], headers=auth) as stream:
            assert "event: done" in "".join(stream.iter_text())
        link = api.post(f"/chatroom/{room['id']}/share", json={}, headers=auth).json()
    return link["share_id"], auth, link["url"]


def test_a_shared_conversation_renders_read_only(page: Page, server: str, page_log: PageLog):
    share_id, auth, url = _shared_room(server)
    assert url == f"{server}/s/{share_id}"
    response = page.goto(url)
    assert response is not None
    assert response.headers["content-security-policy"] == PAGE_CSP
    expect(page.locator("#shared-name")).to_have_text("Shared <b>room</b>")
    question = page.locator(".msg.user .bubble")
    expect(question).to_have_text(HOSTILE)
    reply = page.locator(".msg.assistant .bubble")
    expect(reply).to_contain_text("Demo reply")
    # The question's tags stay text; the reply quotes it through Markdown and DOMPurify.
    assert page.locator("main img, main script, main b").count() == 0
    assert page.locator("textarea, input, form").count() == 0  # read-only
    page_log.assert_clean()

    with httpx.Client(base_url=server, timeout=30, trust_env=False) as api:
        assert api.delete(f"/share/{share_id}", headers=auth).status_code == 204
    page.reload()
    expect(page.locator("#shared-error")).to_have_text("This link does not exist or was revoked.")
    page_log.assert_clean(GONE_LOG)
