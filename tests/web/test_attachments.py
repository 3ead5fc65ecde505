"""Attachments in the web client: files dropped on the conversation, chips removable before
sending (the upload deleted from the server too, also when the user leaves the room), the
server's refusals (415, 413) as readable messages, a message of files alone, and
downloads fetched with the token."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, Response, expect

from tests.web.client import (
    attach_with_button,
    attachments_echo,
    chips,
    drop_files,
    last_question,
    last_reply,
    png,
    sign_in,
)
from tests.web.conftest import PageLog

# A small per-file limit, so a refused upload takes no time.
LIMIT = 64 * 1024
SERVER_ENV = {"ATTACHMENT_MAX_BYTES": str(LIMIT)}
ZIP = b"PK\x03\x04" + b"\x00" * 60  # a zip archive's signature, named .pdf below
NOTES = b"Packing list\n- passport\n- charger\n"
# The browser logs the refused uploads' responses.
REFUSED_LOG = "Failed to load resource: the server responded with a status of 41"


def test_drop_remove_refusals_and_a_message_of_files(
    page: Page, server: str, page_log: PageLog, tmp_path: Path
) -> None:
    sign_in(page, server)
    image = png(32, 20)
    drop_files(page, ("photo.png", "image/png", image), ("notes.txt", "text/plain", NOTES))
    expect(chips(page)).to_have_count(2)
    expect(chips(page).filter(has_text="notes.txt")).to_contain_text("B")  # its size, uploaded
    # A new chat's room was created for the files.
    expect(page.locator("#rooms .room")).to_have_count(1)

    with page.expect_response(is_attachment_delete) as removed:
        page.get_by_role("button", name="Remove notes.txt").click()
    assert removed.value.status == 204
    expect(chips(page)).to_have_count(1)
    expect(chips(page).first).to_contain_text("photo.png")

    drop_files(page, ("archive.pdf", "application/pdf", ZIP))
    error = page.locator("#error")
    expect(error).to_contain_text("archive.pdf: The file is not one of the accepted types")
    attach_with_button(
        page, {"name": "big.txt", "mimeType": "text/plain", "buffer": b"a" * (LIMIT + 1)}
    )
    expect(error).to_have_text(f"big.txt: A file may have at most {LIMIT} bytes on your plan.")
    expect(chips(page)).to_have_count(1)  # refused files leave no chip

    # Files alone make a message: no text needed.
    page.get_by_role("button", name="Send").click()
    expect(chips(page)).to_have_count(0)
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    echo = attachments_echo(("photo.png", "image/png", len(image)))
    expect(last_reply(page)).to_contain_text(echo)
    expect(error).to_be_hidden()

    # A text file is a download link; the download is fetched with the token.
    attach_with_button(page, {"name": "notes.txt", "mimeType": "text/plain", "buffer": NOTES})
    expect(chips(page)).to_have_count(1)
    box = page.get_by_label("Message", exact=True)
    box.fill("and my notes")
    box.press("Enter")
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    expect(last_reply(page)).to_contain_text("text/plain")
    with page.expect_download() as download:
        last_question(page).get_by_role("link", name="Download notes.txt").click()
    saved = tmp_path / "notes.txt"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "notes.txt"
    assert saved.read_bytes() == NOTES

    # After a reload the files are shown again from the messages' parts.
    page.reload()
    thumbnail = page.locator(".msg.user").first.get_by_role("img", name="photo.png")
    expect(thumbnail).to_have_attribute("src", re.compile(r"^blob:"))
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth") == 32

    # A file attached but not sent goes from the server when the user starts a new chat.
    attach_with_button(page, {"name": "draft.txt", "mimeType": "text/plain", "buffer": NOTES})
    expect(chips(page)).to_have_count(1)
    expect(chips(page).first).to_contain_text("B")
    with page.expect_response(is_attachment_delete) as discarded:
        page.locator("#new-chat").click()
    assert discarded.value.status == 204
    expect(chips(page)).to_have_count(0)
    page_log.assert_clean(REFUSED_LOG)


def is_attachment_delete(response: Response) -> bool:
    return response.request.method == "DELETE" and "/attachments/" in response.url
