"""What a person does in the web client, step by step (for tests/web/)."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from tests.helpers import new_number

# Records the text of the reply being streamed at every change of the conversation pane, so a
# test sees the intermediate renders a person sees.
RECORD_RENDERS = """() => {
  window.__renders = [];
  new MutationObserver(() => {
    const live = document.querySelector('.msg.assistant[data-streaming] .body');
    if (live) window.__renders.push(live.textContent);
  }).observe(document.getElementById('messages'),
             {subtree: true, childList: true, characterData: true});
}"""


def sign_in(page: Page, base: str) -> str:
    """Signs in a new number with the code the page shows; returns the number."""
    number = new_number()
    page.goto(base + "/")
    page.get_by_label("Mobile number").fill(number)
    page.get_by_role("button", name="Send code").click()
    expect(page.locator("#otp-shown")).to_contain_text(re.compile(r"Your code is \d{6}"))
    code = re.search(r"\d{6}", page.locator("#otp-shown").inner_text())
    assert code is not None
    expect(page.get_by_label("Code")).to_have_value(code.group())
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#plan-badge")).to_have_text("Basic")
    return number


def quota(page: Page) -> Locator:
    return page.locator("#quota")


def last_reply(page: Page) -> Locator:
    return page.locator(".msg.assistant").last


def last_question(page: Page) -> Locator:
    return page.locator(".msg.user").last


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def wait_reply(page: Page, prompt: str) -> str:
    """Waits for the newest reply to finish; returns its text."""
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    reply = last_reply(page)
    expect(reply).to_contain_text(f'to: "{prompt}"')
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    return reply.locator(".body").inner_text()


def demo_reply(prompt: str, earlier: list[int] | None = None) -> str:
    ids = earlier or []
    noun = "message" if len(ids) == 1 else "messages"
    listed = ", ".join(map(str, ids))
    return f'Demo reply (context: {len(ids)} earlier {noun} [{listed}]) to: "{prompt}"'
