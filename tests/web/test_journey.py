"""The web client in a real browser against a real server: the whole journey of a person,
rooms, hostile content, Markdown. Every page response carries the page's CSP
and nothing reaches the console."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.web.client import (
    RECORD_RENDERS,
    attach_with_button,
    attachments_echo,
    chips,
    demo_reply,
    last_question,
    last_reply,
    png,
    quota,
    send,
    sign_in,
    wait_reply,
)
from tests.web.conftest import PageLog

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"
# The one error the journey provokes on purpose: the browser logs the 429 of the sixth message.
LIMIT_LOG = "Failed to load resource: the server responded with a status of 429"


def test_journey_sign_in_stream_versions_attach_limit_upgrade_and_back(
    page: Page, server: str, page_log: PageLog
) -> None:
    sign_in(page, server)
    expect(quota(page)).to_have_text("5 of 5 left today")
    page.locator("#new-chat").click()
    first_reply_streams(page)
    retry_and_versions(page)
    edit_the_question(page)
    attach_an_image(page)
    until_the_limit(page)
    upgrade_and_back_with_pro(page, server)
    manage_plan_and_back_to_basic(page, server)
    page_log.assert_clean(LIMIT_LOG)


def first_reply_streams(page: Page) -> None:
    """The page shows the reply growing, then whole, as Markdown; the title appears."""
    page.evaluate(RECORD_RENDERS)
    send(page, "Hello **streams**")
    text = wait_reply(page, "Hello streams")
    assert text == demo_reply("Hello streams")
    expect(last_reply(page).locator(".body strong")).to_have_text("streams")
    renders = [r.strip() for r in page.evaluate("window.__renders")]
    renders = [r for r in renders if r and r != text]
    growing = [r for r in dict.fromkeys(renders) if text.startswith(r)]
    assert len(growing) >= 2, renders
    expect(quota(page)).to_have_text("4 of 5 left today")
    # The room's generated title replaces "New chat" in the list and the header.
    expect(page.locator("#rooms .room").first).to_have_text("Hello **streams**")
    expect(page.locator("#room-title")).to_have_text("Hello **streams**")


def retry_and_versions(page: Page) -> None:
    """Retry: a second version of the reply; then to the first and back."""
    last_reply(page).get_by_role("button", name="Retry this reply").click()
    wait_reply(page, "Hello streams")
    position = last_reply(page).locator(".versions .pos")
    expect(position).to_have_text("2/2")
    last_reply(page).get_by_role("button", name="Previous version").click()
    expect(position).to_have_text("1/2")
    last_reply(page).get_by_role("button", name="Next version").click()
    expect(position).to_have_text("2/2")


def edit_the_question(page: Page) -> None:
    """A new version of the question with its own reply; the first one is kept."""
    last_question(page).get_by_role("button", name="Edit this message").click()
    page.get_by_label("Edit your message").fill("Hello again")
    page.get_by_role("button", name="Save and send").click()
    assert wait_reply(page, "Hello again") == demo_reply("Hello again")
    position = last_question(page).locator(".versions .pos")
    expect(position).to_have_text("2/2")
    last_question(page).get_by_role("button", name="Previous version").click()
    expect(last_question(page)).to_contain_text("Hello **streams**")
    expect(position).to_have_text("1/2")
    expect(quota(page)).to_have_text("2 of 5 left today")


def attach_an_image(page: Page) -> None:
    """A PNG through the Attach button: a chip, then the message with its thumbnail (fetched
    with the token), and the demo model names the file it read."""
    image = png()
    attach_with_button(page, {"name": "photo.png", "mimeType": "image/png", "buffer": image})
    expect(chips(page)).to_have_count(1)
    expect(chips(page).first).to_contain_text("photo.png")
    expect(page.get_by_role("button", name="Remove photo.png")).to_be_visible()
    send(page, "fourth, with a photo")
    expect(chips(page)).to_have_count(0)
    reply = wait_reply(page, "fourth, with a photo")
    assert reply.endswith(attachments_echo(("photo.png", "image/png", len(image)))), reply
    thumbnail = last_question(page).get_by_role("img", name="photo.png")
    expect(thumbnail).to_have_attribute("src", re.compile(r"^blob:"))
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth") == 24
    expect(quota(page)).to_have_text("1 of 5 left today")


def until_the_limit(page: Page) -> None:
    """Sends until the daily limit: the page says so, with the time it resets."""
    for prompt in ("fifth",):
        send(page, prompt)
        wait_reply(page, prompt)
    expect(quota(page)).to_have_text("0 of 5 left today")
    send(page, "sixth")
    limit = page.locator("#limit")
    expect(limit).to_be_visible()
    expect(limit).to_contain_text("You have used all 5 messages of your plan for today.")
    expect(limit).to_contain_text(re.compile(r"reset at .+ \(in \d+ (h|min)"))


def upgrade_and_back_with_pro(page: Page, server: str) -> None:
    """The mock's Checkout, Pay, back to the page with Pro; the next message goes through."""
    page.locator("#limit").get_by_role("button", name="Upgrade to Pro").click()
    page.wait_for_url(re.compile(r"/mock-stripe/checkout/"))
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(server + "/")
    expect(page.locator("#plan-badge")).to_have_text("Pro")
    expect(page.locator("#notice")).to_have_text("Welcome to Pro: unlimited messages.")
    expect(quota(page)).to_have_text("Unlimited messages")
    send(page, "sixth, as Pro")
    assert wait_reply(page, "sixth, as Pro") == demo_reply("sixth, as Pro")


def manage_plan_and_back_to_basic(page: Page, server: str) -> None:
    """The mock's portal, cancel, back to Basic."""
    page.get_by_role("button", name="Manage plan").click()
    page.wait_for_url(re.compile(r"/mock-stripe/portal/"))
    page.get_by_role("button", name="Cancel plan").click()
    page.get_by_role("link", name="Return").click()
    page.wait_for_url(server + "/")
    expect(page.locator("#plan-badge")).to_have_text("Basic")
    expect(page.get_by_role("button", name="Upgrade to Pro").first).to_be_visible()


def test_hostile_content_renders_as_text(page: Page, server: str, page_log: PageLog) -> None:
    sign_in(page, server)
    send(page, HOSTILE)
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    reply = last_reply(page).locator(".body")
    expect(reply).to_have_text(demo_reply(HOSTILE))
    expect(last_question(page).locator(".body")).to_have_text(HOSTILE)
    assert page.locator("#messages img, #messages script").count() == 0
    expect(page.locator("#rooms .room").first).to_contain_text("<img")
    page_log.assert_clean()


def test_markdown_renders_code_lists_and_tables_and_drops_unsafe_links(
    page: Page, server: str, page_log: PageLog
) -> None:
    page.goto(server + "/")
    rendered = page.evaluate(
        """async () => {
          const src = document.querySelector('script[type=module]').src;
          const { renderMarkdown } = await import(new URL('markdown.js', src));
          const box = document.createElement('div');
          box.append(renderMarkdown(
            '# Title\\n\\n- one\\n- two\\n\\n```python\\nprint(1 < 2)\\n```\\n\\n' +
            '| a | b |\\n|---|---|\\n| 1 | 2 |\\n\\n' +
            '[x](javascript:alert(3)) [y](https://example.com)' +
            '\\n\\n![pic](https://example.com/p.png)'));
          return {
            html: box.innerHTML,
            h1: box.querySelectorAll('h1').length,
            items: box.querySelectorAll('ul li').length,
            code: box.querySelector('pre code')?.textContent,
            cells: box.querySelectorAll('table td').length,
            hrefs: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')),
            imgs: box.querySelectorAll('img').length,
          };
        }"""
    )
    assert (rendered["h1"], rendered["items"], rendered["cells"]) == (1, 2, 2), rendered
    assert rendered["code"] == "print(1 < 2)\n"
    assert "javascript:" not in rendered["html"]
    assert "https://example.com" in rendered["hrefs"]
    assert rendered["imgs"] == 0
    page_log.assert_clean()


def test_rename_delete_and_sign_out(page: Page, server: str, page_log: PageLog) -> None:
    sign_in(page, server)
    send(page, "first room")
    wait_reply(page, "first room")
    page.locator("#new-chat").click()
    send(page, "second room")
    wait_reply(page, "second room")
    rooms = page.locator("#rooms .room")
    expect(rooms).to_have_text(["second room", "first room"])  # newest first

    page.get_by_role("button", name="Rename").click()
    page.get_by_role("textbox", name="Name").fill("Renamed")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#room-title")).to_have_text("Renamed")
    expect(rooms).to_have_text(["Renamed", "first room"])

    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(rooms).to_have_text(["first room"])
    expect(page.locator("#room-title")).to_have_text("New chat")

    # Still signed in after a reload (the refresh token), until signing out.
    page.reload()
    expect(rooms).to_have_text(["first room"])
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin-error")).to_have_text("You are signed out.")
    assert page.evaluate("localStorage.getItem('gb.refresh_token')") is None
    page.reload()
    expect(page.get_by_label("Mobile number")).to_be_visible()
    page_log.assert_clean()
