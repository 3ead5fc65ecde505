"""A reply's thought summary and Google Search citations in the web client, from a server whose
provider is the fake Gemini API of tests/ai (the demo model has no citations): thoughts in a
collapsible "Thinking" block, sources under the reply, Google's search suggestions sanitised,
all of it again from the stored parts after a reload; hostile HTML in them stays inert."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.ai.fake_gemini import API_KEY, FakeGemini, Reply, search_grounding
from tests.conftest import Storage
from tests.web.client import sign_in
from tests.web.conftest import PageLog, serving

MODEL = "gemini-2.5-flash"
PROMPT = "Is May a good time for Lisbon?"
ANSWER = ("Sí, ", "May is mild: ", "about 22 °C.")
HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"
ENTRY_POINT = (
    "<style>.container{color:red}</style>"
    '<div class="container" style="color:red">'
    '<a class="chip" href="https://www.google.com/search?q=lisbon+weather+may">'
    "lisbon weather may</a>"
    f"{HOSTILE}</div>"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    server = FakeGemini().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(
    storage: Storage,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    fake: FakeGemini,
) -> Iterator[str]:
    with serving(
        storage,
        tmp_path_factory,
        request.module,
        AI_PROVIDER="gemini",
        GEMINI_API_KEY=API_KEY,
        GEMINI_MODEL=MODEL,
        GEMINI_BASE_URL=fake.url,
    ) as base:
        yield base


def grounding() -> dict[str, object]:
    found = search_grounding("".join(ANSWER), "about 22 °C.")
    found["searchEntryPoint"] = {"renderedContent": ENTRY_POINT}
    found["groundingChunks"] = [
        {"web": {"uri": "https://vertexaisearch.example/1", "title": f"ipma.pt {HOSTILE}"}},
        {"web": {"uri": "javascript:alert(3)", "title": "visitlisboa.com"}},
    ]
    return found


def test_thinking_block_and_sources_live_and_after_a_reload(
    page: Page, server: str, page_log: PageLog, fake: FakeGemini
) -> None:
    fake.script(
        Reply(chunks=ANSWER, thoughts=["Weighing **May** in Lisbon."], grounding=grounding())
    )
    sign_in(page, server)
    page.get_by_role("button", name=re.compile(r"^Model and options")).click()
    dialog = page.get_by_role("dialog", name="Model and options")
    expect(dialog.locator("#set-thinking-help")).to_have_text(
        "Shows the model's thought summary above its reply."
    )
    dialog.get_by_label("Thinking").select_option("low")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()

    box = page.get_by_label("Message", exact=True)
    box.fill(PROMPT)
    box.press("Enter")
    expect(page.locator(".msg.assistant .body")).to_contain_text("about 22 °C.")
    expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
    # The room's thinking reached the model, as the room's option.
    assert fake.streams[-1].generation_config["thinkingConfig"] == {
        "thinkingBudget": 1024,
        "includeThoughts": True,
    }
    check_reply(page)
    page.reload()
    expect(page.locator(".msg.assistant")).to_have_count(1)
    check_reply(page)
    page_log.assert_clean()


def check_reply(page: Page) -> None:
    reply = page.locator(".msg.assistant").last
    body = reply.locator(".body")
    thoughts = body.locator("details.thoughts")
    expect(thoughts.locator("summary")).to_have_text("Thinking")
    expect(thoughts.locator(".thought-body")).to_be_hidden()  # collapsed until opened
    thoughts.locator("summary").click()
    expect(thoughts.locator(".thought-body")).to_have_text("Weighing May in Lisbon.")
    expect(thoughts.locator(".thought-body strong")).to_have_text("May")
    # The answer alone is the reply's text: thoughts and sources are apart from it.
    expect(body.locator(":scope > p").first).to_have_text("".join(ANSWER))

    sources = reply.get_by_role("region", name="Sources")
    expect(sources.locator("li")).to_have_text([f"ipma.pt {HOSTILE}", "visitlisboa.com"])
    first = sources.get_by_role("link", name=f"ipma.pt {HOSTILE}")
    expect(first).to_have_attribute("href", "https://vertexaisearch.example/1")
    expect(first).to_have_attribute("rel", "noopener noreferrer")
    expect(first).to_have_attribute("target", "_blank")
    assert sources.get_by_role("link", name="visitlisboa.com").count() == 0  # javascript: URI

    entry = sources.get_by_role("group", name="Google Search suggestions")
    chip = entry.get_by_role("link", name="lisbon weather may")
    expect(chip).to_have_attribute("rel", "noopener noreferrer")
    inert = "style, script, img, [style], [onerror]"
    assert reply.locator(inert).count() == 0
