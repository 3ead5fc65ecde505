"""The room's model and options in the web client (GET /models, PATCH /chatroom/{id}): what a
model lacks or the plan does not allow is disabled and explained; a choice made for a new chat
goes with its room; a 403 plan_required is a readable message with Upgrade."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.web.client import send, sign_in, wait_reply
from tests.web.conftest import PageLog

# The browser logs the refused PATCH's response.
REFUSED_LOG = "Failed to load resource: the server responded with a status of 403"


def open_settings(page: Page) -> None:
    page.get_by_role("button", name=re.compile(r"^Model and options")).click()
    expect(page.get_by_role("dialog", name="Model and options")).to_be_visible()


def test_options_disabled_with_reasons_saved_and_plan_required(
    page: Page, server: str, page_log: PageLog
) -> None:
    sign_in(page, server)
    header = page.get_by_role("button", name=re.compile(r"^Model and options"))
    expect(header).to_have_accessible_name("Model and options: Demo (offline)")
    open_settings(page)
    dialog = page.get_by_role("dialog", name="Model and options")
    model = dialog.get_by_label("Model", exact=True)
    expect(model.locator("option")).to_have_text(
        ["Demo (offline)", "Demo Pro (offline) (Pro plan)"]
    )
    expect(model.locator("option[value=demo-pro]")).to_be_disabled()
    expect(dialog.locator("#set-model-help")).to_contain_text("Reads images, PDFs, Google Search")
    thinking = dialog.get_by_label("Thinking")
    expect(thinking.locator("option[value=low]")).to_be_disabled()
    expect(dialog.locator("#set-thinking-help")).to_have_text(
        "Demo (offline) does not think before answering."
    )
    grounding = dialog.get_by_label("Ground answers in Google Search")
    expect(grounding).to_be_disabled()
    expect(dialog.locator("#set-grounding-help")).to_have_text(
        "Grounding in Google Search needs the Pro plan."
    )

    # A new chat's temperature: kept until its room is created by the first message.
    dialog.get_by_label("The model's default temperature").uncheck()
    dialog.get_by_label(re.compile("^Temperature")).fill("0.4")
    expect(dialog.locator("#set-temperature-value")).to_have_text("0.4")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    send(page, "a cool reply please")
    wait_reply(page, "a cool reply please")
    page.reload()
    expect(page.locator("#room-title")).to_have_text("a cool reply please")
    open_settings(page)
    expect(dialog.get_by_label("The model's default temperature")).not_to_be_checked()
    expect(dialog.locator("#set-temperature-value")).to_have_text("0.4")

    # A page that still offers a Pro model (the plan changed after it loaded): the server's 403
    # is shown in the dialog, with Upgrade, and nothing changes.
    model.evaluate("select => select.querySelector('[value=demo-pro]').disabled = false")
    model.select_option("demo-pro")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_have_text("demo-pro needs the Pro plan.")
    expect(dialog.get_by_role("button", name="Upgrade to Pro")).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(header).to_have_accessible_name("Model and options: Demo (offline)")
    page_log.assert_clean(REFUSED_LOG)
