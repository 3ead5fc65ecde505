"""The main screens at desktop width and at 390 px, light and dark: no serious or critical
accessibility violation (axe-core, vendored in tests/web/vendor), keyboard-only use, and
screenshots (written to docs/screenshots/ with GB_WEB_SCREENSHOTS=1, else to a temp dir)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.web.client import attach_with_button, chips, png, send, sign_in, wait_reply
from tests.web.conftest import PageLog, open_page

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SERIOUS = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target)}));
}"""


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("GB_WEB_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SHOTS
    return tmp_path


def violations(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(SERIOUS)
    return found


def axe_page(browser: Browser, log: PageLog, width: int, height: int, dark: bool = False) -> Page:
    page = open_page(
        browser,
        log,
        viewport={"width": width, "height": height},
        color_scheme="dark" if dark else "light",
        reduced_motion="reduce",  # the drawer opens at once: no screenshot mid-slide
    )
    # An init script is injected by the browser itself, so the page's CSP (no inline script)
    # does not stand in its way.
    page.add_init_script(path=str(AXE))
    return page


@pytest.mark.parametrize(
    ("name", "width", "height", "dark"),
    [("desktop", 1280, 800, False), ("phone", 390, 844, False), ("desktop-dark", 1280, 800, True)],
)
def test_main_screens_are_accessible_and_photographed(
    browser: Browser,
    server: str,
    page_log: PageLog,
    shots: Path,
    name: str,
    width: int,
    height: int,
    dark: bool,
) -> None:
    page = axe_page(browser, page_log, width, height, dark)
    try:
        page.goto(server + "/")
        expect(page.get_by_label("Mobile number")).to_be_focused()
        assert violations(page) == []
        page.screenshot(path=str(shots / f"sign-in-{name}.png"))

        sign_in(page, server)
        prompt = "Show me `code` and **bold** text"
        send(page, prompt)
        wait_reply(page, "Show me code and bold text")
        attach_with_button(page, {"name": "photo.png", "mimeType": "image/png", "buffer": png()})
        expect(chips(page).first).to_contain_text("B")  # uploaded: a chip in the composer
        assert violations(page) == []
        send(page, "And a second question")
        # The second reply was given the first exchange (ids depend on the other tests).
        assert "(context: 2 earlier messages [" in wait_reply(page, "And a second question")
        expect(page.get_by_role("img", name="photo.png")).to_have_attribute(
            "src", re.compile("^blob:")
        )
        assert violations(page) == []
        page.screenshot(path=str(shots / f"chat-{name}.png"))
        page.get_by_role("button", name=re.compile("^Model and options")).click()
        dialog = page.get_by_role("dialog", name="Model and options")
        expect(dialog.get_by_label("Model", exact=True)).to_be_focused()
        assert violations(page) == []
        page.screenshot(path=str(shots / f"settings-{name}.png"))
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        if width < 760:
            page.get_by_role("button", name="Show chats").click()
            expect(page.get_by_role("button", name="New chat")).to_be_visible()
            assert violations(page) == []
            page.screenshot(path=str(shots / f"rooms-{name}.png"))
    finally:
        page.context.close()
    page_log.assert_clean()


def test_keyboard_only_send_new_line_and_stop(page: Page, server: str, page_log: PageLog) -> None:
    sign_in(page, server)
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_focused()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    expect(page.locator(".msg.assistant .state").last).to_have_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    page_log.assert_clean()
