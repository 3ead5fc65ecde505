"""Search, share links, export / import and account deletion in the web client, in a real
browser against a real server: results open their message (on its own branch), hostile text
stays text, a shared page is revoked, an export round-trips, a deleted account's token is
401, and the new panels and dialogs pass axe at 1280 px and 390 px."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Error, Page, Route, expect

from tests.web.client import demo_reply, send, sign_in, wait_reply
from tests.web.conftest import PageLog, open_page
from tests.web.test_screens import AXE, DOCS_SHOTS, violations

CHUNK_DELAY_MS = 0  # whole replies at once: these tests are about what comes after them
GONE_LOG = "Failed to load resource: the server responded with a status of 404"
HOSTILE = "hostile <img src=x onerror=alert(1)>"


@pytest.fixture
def shot_dir(tmp_path: Path) -> Path:
    """docs/screenshots/ with GB_WEB_SCREENSHOTS=1 (as test_screens.py), else a temp dir."""
    return DOCS_SHOTS if os.environ.get("GB_WEB_SCREENSHOTS") == "1" else tmp_path


def search(page: Page, query: str) -> None:
    page.get_by_role("searchbox", name="Search chats").fill(query)


def results(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#search-results button")


def test_search_opens_a_reply_on_its_own_branch_highlighted(
    page: Page, server: str, page_log: PageLog
):
    sign_in(page, server)
    send(page, "zebra crossing")
    wait_reply(page, "zebra crossing")
    zebra_room = page.url
    # A new version of the question: the zebra reply leaves the active branch.
    page.locator(".msg.user").last.get_by_role("button", name="Edit this message").click()
    page.get_by_label("Edit your message").fill("yak shaving")
    page.get_by_role("button", name="Save and send").click()
    wait_reply(page, "yak shaving")
    page.locator("#new-chat").click()
    send(page, "something else")
    wait_reply(page, "something else")

    search(page, "zebra")
    reply_hit = results(page).filter(has_text="Reply ·")
    expect(reply_hit).to_have_count(1)
    expect(reply_hit.locator("mark")).to_have_text(["zebra"])
    expect(results(page).filter(has_text="You ·")).to_have_count(1)
    # The question, the reply, and the room once its generated title arrives.
    expect(page.locator("#search-status")).to_have_text(re.compile(r"^[23] results\.$"))
    reply_hit.click()

    found = page.locator(".msg.found")
    expect(found).to_have_count(1)
    expect(found).to_have_class(re.compile(r"\bassistant\b"))
    expect(found).to_contain_text('to: "zebra crossing"')
    expect(found).to_be_focused()
    expect(page).to_have_url(zebra_room)
    expect(page.locator(".msg.user .versions .pos")).to_have_text("1/2")  # the branch switched

    # Escape clears; a query the API refuses is said in words.
    page.get_by_role("searchbox", name="Search chats").press("Escape")
    expect(page.locator("#search-panel")).to_be_hidden()
    expect(page.get_by_role("searchbox", name="Search chats")).to_have_value("")
    search(page, "x" * 501)
    expect(page.locator("#search-status")).to_contain_text("That search is too long or not valid")
    search(page, "nosuchwordanywhere")
    expect(page.locator("#search-status")).to_have_text("No results for “nosuchwordanywhere”.")
    page_log.assert_clean("Failed to load resource: the server responded with a status of 422")


def test_an_answer_to_an_older_query_is_not_shown(page: Page, server: str, page_log: PageLog):
    sign_in(page, server)
    send(page, "newest words")
    wait_reply(page, "newest words")
    held: list[Route] = []
    page.route("**/search?q=older*", lambda route: held.append(route))  # its answer held back
    with page.expect_request("**/search?q=older*"):
        search(page, "older")
    search(page, "newest")
    expect(results(page).filter(has_text="Reply ·")).to_have_count(1)
    stale = {
        "results": [
            {
                "chatroom_id": 1,
                "chatroom_name": "STALE",
                "message_id": None,
                "role": None,
                "snippet": "STALE",
                "created_at": "2026-01-01T00:00:00Z",
            }
        ],
        "next_cursor": None,
    }
    with contextlib.suppress(Error):  # the page may have aborted it already
        held[0].fulfill(json=stale)
    search(page, "newest words")
    expect(results(page).filter(has_text="Reply ·")).to_have_count(1)
    expect(page.locator("#search-results")).not_to_contain_text("STALE")
    page_log.assert_clean()


def chatgpt_conversation(title: str, texts: list[str]) -> dict[str, object]:
    """ChatGPT's conversations.json entry: a chain of alternating user and assistant nodes."""
    mapping: dict[str, object] = {}
    for index, text in enumerate(texts):
        mapping[f"n{index}"] = {
            "message": {
                "author": {"role": "user" if index % 2 == 0 else "assistant"},
                "content": {"content_type": "text", "parts": [text]},
                "create_time": 1_760_000_000 + index,
            },
            "parent": f"n{index - 1}" if index else None,
            "children": [f"n{index + 1}"] if index < len(texts) - 1 else [],
        }
    return {"title": title, "mapping": mapping, "current_node": f"n{len(texts) - 1}"}


def test_more_results_follow_the_cursor(page: Page, server: str, page_log: PageLog):
    sign_in(page, server)
    texts = [f"needle {chr(97 + i) * 4}" for i in range(25)]  # imported: no quota, no reply made
    body = json.dumps([chatgpt_conversation("Haystack", texts)]).encode()
    page.get_by_role("button", name="Your data").click()
    dialog = page.get_by_role("dialog", name="Your data")
    dialog.get_by_label(re.compile("^A file exported here")).set_input_files(
        {"name": "conversations.json", "mimeType": "application/json", "buffer": body}
    )
    expect(dialog.locator("#data-done")).to_have_text("Imported 1 chat from conversations.json.")
    dialog.get_by_role("button", name="Close").click()
    search(page, "needle")
    expect(results(page)).to_have_count(20)
    expect(page.locator("#search-status")).to_have_text("20 results so far.")
    page.get_by_role("button", name="More results").click()
    expect(results(page)).to_have_count(25)
    expect(page.get_by_role("button", name="More results")).to_be_hidden()
    expect(results(page).nth(20)).to_be_focused()  # the first of the new page
    found = results(page).locator(".snippet").all_inner_texts()
    assert sorted(found) == sorted(texts)  # every message once, no repeat, no gap
    page_log.assert_clean()


def test_a_hostile_message_found_by_search_renders_as_text(
    page: Page, server: str, page_log: PageLog
):
    sign_in(page, server)
    send(page, HOSTILE)
    wait_reply(page, HOSTILE)
    search(page, "hostile")
    expect(results(page).filter(has_text="You ·")).to_have_count(1)
    expect(results(page).filter(has_text="Reply ·")).to_have_count(1)
    expect(results(page).first.locator("mark")).to_have_text("hostile")
    assert page.locator("#search-results img, #search-results script").count() == 0
    assert page.locator("#search-results li *:not(button, span, mark)").count() == 0
    results(page).filter(has_text="You").click()
    expect(page.locator(".msg.found .bubble")).to_have_text(HOSTILE)
    assert page.locator("main img").count() == 0
    page_log.assert_clean()  # no alert() dialog, no console error


def test_share_open_the_link_then_revoke_it(
    browser: Browser, page: Page, server: str, page_log: PageLog
):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    sign_in(page, server)
    send(page, "what to share")
    wait_reply(page, "what to share")
    page.get_by_role("button", name="Share", exact=True).click()
    dialog = page.get_by_role("dialog", name="Share this chat")
    expect(dialog.get_by_text("No links yet.")).to_be_visible()
    dialog.get_by_role("button", name="Create a link").click()
    expect(dialog.get_by_label("New link")).to_have_value(re.compile("/s/"))
    url = dialog.get_by_label("New link").input_value()
    assert re.fullmatch(re.escape(server) + r"/s/[A-Za-z0-9_-]{24}", url)
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.locator("#share-copied")).to_have_text("Link copied.")
    assert page.evaluate("navigator.clipboard.readText()") == url
    expect(dialog.locator("#share-list li")).to_have_count(1)

    viewer = open_page(browser, page_log)
    try:
        viewer.goto(url)
        expect(viewer.locator(".msg.assistant")).to_contain_text('to: "what to share"')
        dialog.get_by_role("button", name=re.compile("^Revoke")).click()
        expect(dialog.get_by_text("No links yet.")).to_be_visible()
        expect(dialog.locator("#share-new")).to_be_hidden()
        viewer.reload()
        expect(viewer.locator("#shared-error")).to_have_text(
            "This link does not exist or was revoked."
        )
    finally:
        viewer.context.close()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    page_log.assert_clean(GONE_LOG)


def test_export_downloads_the_tree_and_import_brings_it_back(
    page: Page, server: str, page_log: PageLog
):
    sign_in(page, server)
    send(page, "export me")
    wait_reply(page, "export me")
    ids = [
        int(i) for i in page.locator(".msg").evaluate_all("ns => ns.map(n => n.dataset.messageId)")
    ]
    page.get_by_role("button", name="Your data").click()
    dialog = page.get_by_role("dialog", name="Your data")
    with page.expect_download() as downloaded:
        dialog.get_by_role("button", name="This chat (JSON)").click()
    download = downloaded.value
    exported = json.loads(download.path().read_text(encoding="utf-8"))
    # The file is named after its room, the room whose messages the page shows (ids below).
    assert download.suggested_filename == f"chatroom-{exported['chatroom']['id']}.json"
    assert exported["format"] == "gemini-backend/chatroom"
    assert [m["id"] for m in exported["messages"]] == ids
    assert [m["parent_id"] for m in exported["messages"]] == [None, ids[0]]
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][0]["content"] == "export me"
    assert exported["chatroom"]["active_leaf_id"] == ids[1]
    with page.expect_download() as markdown:
        dialog.get_by_role("button", name="This chat (Markdown)").click()
    assert "### You\n\nexport me" in markdown.value.path().read_text(encoding="utf-8")

    dialog.get_by_label(re.compile("^A file exported here")).set_input_files(
        {"name": "bad.json", "mimeType": "application/json", "buffer": b"{not json"}
    )
    expect(dialog.locator("#data-error")).to_be_visible()
    dialog.get_by_label(re.compile("^A file exported here")).set_input_files(download.path())
    expect(dialog.locator("#data-done")).to_have_text(re.compile(r"^Imported 1 chat from "))
    dialog.get_by_role("button", name="Close").click()
    expect(page.locator("#rooms .room")).to_have_count(2)
    expect(page.locator(".msg.user .body")).to_have_text(["export me"])
    assert int(page.locator(".msg.user").get_attribute("data-message-id") or 0) > ids[1]
    page_log.assert_clean("Failed to load resource: the server responded with a status of 422")


@pytest.mark.parametrize("width", [1280, 390])
def test_search_and_dialogs_are_accessible_and_usable(
    browser: Browser, server: str, page_log: PageLog, width: int, shot_dir: Path
):
    page = open_page(
        browser, page_log, viewport={"width": width, "height": 844}, reduced_motion="reduce"
    )
    page.add_init_script(path=str(AXE))
    try:
        sign_in(page, server)
        send(page, "accessible answers")
        wait_reply(page, "accessible answers")
        if width < 760:
            page.get_by_role("button", name="Show chats").click()
        search(page, "accessible")
        expect(results(page).filter(has_text="Reply ·")).to_have_count(1)
        assert violations(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        name = "desktop" if width >= 760 else "phone"
        page.screenshot(path=str(shot_dir / f"search-{name}.png"))
        # The keyboard alone: Tab from the box reaches a result, Enter opens it.
        page.get_by_role("searchbox", name="Search chats").press("Tab")
        expect(results(page).first).to_be_focused()
        results(page).filter(has_text="Reply ·").focus()  # the room's title may come first
        page.keyboard.press("Enter")
        expect(page.locator(".msg.found")).to_be_focused()
        expect(page.get_by_role("button", name="Share", exact=True)).to_be_visible()
        page.get_by_role("button", name="Share", exact=True).click()
        page.get_by_role("button", name="Create a link").click()
        expect(page.locator("#share-list li")).to_have_count(1)
        assert violations(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(shot_dir / f"share-{name}.png"))
        page.keyboard.press("Escape")
        if width < 760:
            page.get_by_role("button", name="Show chats").click()
        page.get_by_role("button", name="Your data").click()
        expect(page.get_by_role("dialog", name="Your data")).to_be_visible()
        assert violations(page) == []
        page.get_by_role("button", name="Delete account…").click()
        expect(page.get_by_role("dialog", name="Delete your account?")).to_be_visible()
        assert violations(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.get_by_role("button", name="Cancel").click()
    finally:
        page.context.close()
    page_log.assert_clean()


def test_deleting_the_account_signs_out_and_ends_the_token(
    page: Page, server: str, page_log: PageLog
):
    sign_in(page, server)
    send(page, "soon gone")
    wait_reply(page, "soon gone")
    token = next(h["authorization"] for _, h in reversed(page_log.requests) if "authorization" in h)
    page.get_by_role("button", name="Your data").click()
    page.get_by_role("button", name="Delete account…").click()
    dialog = page.get_by_role("dialog", name="Delete your account?")
    dialog.get_by_role("button", name="Delete my account").click()
    expect(dialog.locator("#erase-error")).to_have_text(re.compile("^Enter a one-time password"))
    dialog.get_by_role("button", name="Send me a code").click()
    expect(dialog.get_by_label("A new one-time password")).to_have_value(re.compile(r"^\d{6}$"))
    dialog.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_label("Mobile number")).to_be_visible()
    expect(page.locator("#signin-error")).to_have_text(
        "Your account and everything in it were deleted."
    )
    with httpx.Client(base_url=server, timeout=30, trust_env=False) as api:
        assert api.get("/user/me", headers={"Authorization": token}).status_code == 401
    page_log.assert_clean()


# Ids are never reused (docs/privacy.md): a new reply never plays back a deleted account's.
def test_the_next_account_never_sees_a_deleted_accounts_reply(page: Page, server: str):
    sign_in(page, server)
    send(page, "private words")
    wait_reply(page, "private words")
    page.get_by_role("button", name="Your data").click()
    page.get_by_role("button", name="Delete account…").click()
    dialog = page.get_by_role("dialog", name="Delete your account?")
    dialog.get_by_role("button", name="Send me a code").click()
    expect(dialog.get_by_label("A new one-time password")).to_have_value(re.compile(r"^\d{6}$"))
    dialog.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_label("Mobile number")).to_be_visible()
    sign_in(page, server)
    send(page, "fresh start")
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    expect(page.locator(".msg.assistant .body")).to_have_text(
        demo_reply("fresh start"), timeout=5000
    )
