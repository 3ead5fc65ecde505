"""Browser tests of the web client: Playwright for Python driving Debian's Chromium
(`/usr/bin/chromium`, installed by `.ci/run`; Playwright's own browser download is not used)
against a real `gemini-backend serve` process (plus a worker in production mode).

Without the browser the tests are skipped with the reason, except under CI=true, where a
missing browser fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect, sync_playwright

from gemini_backend.web.router import PAGE_CSP
from tests.conftest import BACKEND, Storage
from tests.processes import free_port, running_service, service_env

CHROMIUM = Path(os.environ.get("GB_CHROMIUM", "/usr/bin/chromium"))
# How long a step of a journey may take on a loaded 2-core machine.
STEP_TIMEOUT_MS = 30_000
# The slow demo model: each of its (about five) chunks 700 ms apart, so a reply visibly grows.
# A module may set its own CHUNK_DELAY_MS.
CHUNK_DELAY_MS = 700


# Per module, and after the server: sync Playwright holds an event loop in this thread for its
# lifetime, and other fixtures (the run's database) use asyncio.run.
@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def serving(
    storage: Storage, tmp_path_factory: pytest.TempPathFactory, module: object, **env: str
) -> Iterator[str]:
    """A real service (embedded or production, as the run's GB_TEST_BACKEND) with the slow demo
    model (the module's CHUNK_DELAY_MS), the built-in Stripe mock and `env`; its base URL."""
    tmp_path = tmp_path_factory.mktemp("web")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    values = service_env(
        BACKEND,
        database_url=storage.database_url or "",
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        JWT_SECRET="w" * 40,
        PUBLIC_BASE_URL=base,
        DEMO_CHUNK_DELAY_MS=str(getattr(module, "CHUNK_DELAY_MS", CHUNK_DELAY_MS)),
        **env,
    )
    with running_service(BACKEND, values, tmp_path, port):
        yield base


@pytest.fixture(scope="module")
def server(
    storage: Storage, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The service of a module (a module may set SERVER_ENV, settings of its own); its URL."""
    env = getattr(request.module, "SERVER_ENV", {})
    with serving(storage, tmp_path_factory, request.module, **env) as base:
        yield base


@dataclass
class PageLog:
    """What a page reported: console errors, uncaught errors, dialogs, and the CSP of every
    page response of the service."""

    base: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    missing_csp: list[str] = field(default_factory=list)
    page_responses: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")
        path = response.url.removeprefix(self.base)
        if response.url.startswith(self.base) and (
            path.split("?")[0] == "/" or path.startswith("/static/")
        ):
            self.page_responses += 1
            if response.headers.get("content-security-policy") != PAGE_CSP:
                self.missing_csp.append(response.url)

    def assert_clean(self, *allowed: str) -> None:
        """No console error (but those starting with one of `allowed`), no uncaught error, no
        dialog, the page's CSP on every page response."""
        unexpected = (
            [e for e in self.errors if not e.startswith(allowed)] if allowed else self.errors
        )
        assert unexpected == [], self.failed
        assert self.dialogs == []
        assert self.page_responses > 0
        assert self.missing_csp == []


@pytest.fixture
def page_log(server: str) -> PageLog:
    return PageLog(server)


def open_page(browser: Browser, log: PageLog, **context_options: object) -> Page:
    context = browser.new_context(**context_options)  # type: ignore[arg-type]
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    page.on("console", log.console)
    page.on("pageerror", lambda error: log.errors.append(f"uncaught: {error}"))
    page.on("response", log.response)
    page.on("request", lambda r: log.requests.append((r.url, r.headers)))

    def on_dialog(dialog: object) -> None:
        log.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)
    return page


@pytest.fixture
def page(browser: Browser, page_log: PageLog) -> Iterator[Page]:
    opened = open_page(browser, page_log, viewport={"width": 1280, "height": 800})
    try:
        yield opened
    finally:
        opened.context.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.browser)
