"""A reply being produced survives a reload of the page: the stream is reopened with
Last-Event-ID and the reply ends whole, once."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.web.client import demo_reply, send, sign_in, wait_reply
from tests.web.conftest import PageLog

# Slower than the other modules' model: about six seconds from the first chunk to the last, so
# the reload (sign-in refresh, rooms, plan, the room) lands in the middle of the reply even on a
# loaded machine.
CHUNK_DELAY_MS = 1500


def test_a_reload_in_the_middle_of_a_reply_ends_with_the_whole_reply_once(
    page: Page, server: str, page_log: PageLog
) -> None:
    sign_in(page, server)
    prompt = "Tell me about resuming streams"
    send(page, prompt)
    live = page.locator(".msg.assistant[data-streaming] .body")
    expect(live).to_contain_text("Demo")  # the first chunk is on screen, the rest is not
    assert page.evaluate("sessionStorage.getItem('gb.stream')") is not None
    reloaded_at = len(page_log.requests)
    page.reload()
    text = wait_reply(page, prompt)
    assert text == demo_reply(prompt)
    assert page.locator(".msg.assistant").count() == 1
    resumed = [
        headers for url, headers in page_log.requests[reloaded_at:] if url.endswith("/stream")
    ]
    # The stream reopened after the reload continued from the last event the page had.
    assert resumed, "no stream was reopened: the reply ended before the reload"
    assert resumed[0].get("last-event-id"), resumed
    assert page.evaluate("sessionStorage.getItem('gb.stream')") is None
    page_log.assert_clean()
