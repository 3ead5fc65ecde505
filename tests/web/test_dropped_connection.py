"""A reply being produced survives a dropped connection: the network goes away mid-reply (every
connection between the browser and the service reset, the browser offline), the page says it
is reconnecting, and once the network is back it reopens the stream with Last-Event-ID and the
reply ends whole, once."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.reliability.fault_proxy import FaultProxy
from tests.web.client import demo_reply, send, sign_in, wait_reply
from tests.web.conftest import PageLog, open_page

# Slow enough that the drop lands in the middle of the reply (about six seconds long).
CHUNK_DELAY_MS = 1500
# What the browser logs for the requests the drop broke.
NETWORK_LOG = "Failed to load resource: net::ERR_"


@pytest.fixture
def proxy(server: str) -> Iterator[FaultProxy]:
    """Between the browser and the service: cutting it resets every open connection."""
    port = urlsplit(server).port
    assert port is not None
    started = FaultProxy(port).start()
    try:
        yield started
    finally:
        started.close()


def test_a_dropped_connection_mid_reply_ends_with_the_whole_reply_once(
    browser: Browser, proxy: FaultProxy
) -> None:
    base = f"http://127.0.0.1:{proxy.port}"
    log = PageLog(base)
    page: Page = open_page(browser, log, viewport={"width": 1280, "height": 800})
    try:
        sign_in(page, base)
        prompt = "Tell me about dropped connections"
        send(page, prompt)
        live = page.locator(".msg.assistant[data-streaming] .body")
        expect(live).to_contain_text("Demo")  # the first chunk is on screen, the rest is not
        dropped_at = len(log.requests)
        page.context.set_offline(True)
        proxy.cut()
        notice = page.locator("#notice")
        expect(notice).to_have_text("Connection lost. Reconnecting…")
        shown = live.inner_text()
        assert shown.startswith("Demo")
        assert shown != demo_reply(prompt)
        page.context.set_offline(False)

        assert wait_reply(page, prompt) == demo_reply(prompt)
        assert page.locator(".msg.assistant").count() == 1
        expect(notice).to_be_hidden()
        reopened = [h for url, h in log.requests[dropped_at:] if url.endswith("/stream")]
        assert reopened, "the stream was not reopened"
        assert all(h.get("last-event-id") for h in reopened), reopened
        # The reply the server stored is the one on screen.
        page.reload()
        assert wait_reply(page, prompt) == demo_reply(prompt)
    finally:
        page.context.close()
    log.assert_clean(NETWORK_LOG)
