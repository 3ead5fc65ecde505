"""What a person does in the web client, step by step (for tests/web/)."""

from __future__ import annotations

import re
import struct
import zlib

from playwright.sync_api import FilePayload, Locator, Page, expect

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


def png(width: int = 24, height: int = 16) -> bytes:
    """A real PNG (a red-to-blue gradient), built here: signature, IHDR, IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((255 - x * 10 % 256, 40, x * 10 % 256)) for x in range(width))
        for _ in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def attach_with_button(page: Page, *files: FilePayload) -> None:
    """Attach files as a person does: the Attach button, then the browser's file chooser."""
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach files").click()
    chooser.value.set_files(list(files))


def drop_files(page: Page, *files: tuple[str, str, bytes]) -> None:
    """Drop files (name, type, bytes) on the conversation pane, as a drag from the desktop."""
    handle = page.evaluate_handle(
        """(files) => {
          const transfer = new DataTransfer();
          for (const [name, type, bytes] of files) {
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type}));
          }
          return transfer;
        }""",
        [[name, kind, list(data)] for name, kind, data in files],
    )
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event("#messages", event, {"dataTransfer": handle})


def chips(page: Page) -> Locator:
    return page.locator("#chips .chip")


def attachments_echo(*files: tuple[str, str, int]) -> str:
    """The demo model's list of the files it received."""
    listed = ", ".join(f"{name} {kind} {size} B" for name, kind, size in files)
    return f"[attachments: {listed}]"
