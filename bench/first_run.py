"""A newcomer's first run: a clean clone, `make run`, then the first streamed reply in a browser.

    python -m bench.first_run [--port 8765]

Clones this checkout into a temporary directory, runs `make run` there (creating its .venv from
the package registry or uv's cache, migrating, serving in embedded mode), and drives Debian's
Chromium through the web client: sign in with the code the page shows, send a message, wait
until the streamed reply has finished. Prints the seconds of each step and the total. It runs
the dev venv's Playwright against the clone's server, so only the clone is "fresh".
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GB_CHROMIUM", "/usr/bin/chromium")


def _wait_healthy(base: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"make run exited with {process.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling a starting server
    raise SystemExit("no /health answer within the deadline")


def _first_reply(base: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        expect.set_options(timeout=60_000)
        page.goto(base + "/")
        page.get_by_label("Mobile number").fill("+919876599999")
        page.get_by_role("button", name="Send code").click()
        expect(page.locator("#otp-shown")).to_contain_text(re.compile(r"\d{6}"))
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#plan-badge")).to_have_text("Basic")
        box = page.get_by_label("Message", exact=True)
        box.fill("hello from a clean clone")
        box.press("Enter")
        expect(page.locator(".msg.assistant").last).to_contain_text("hello from a clean clone")
        expect(page.locator(".msg.assistant[data-streaming]")).to_have_count(0)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="gb-first-run-") as tmp:
        clone = Path(tmp) / "clone"
        started = time.monotonic()
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "DATABASE_URL"}}
        env["PORT"] = str(args.port)
        log = (Path(tmp) / "run.log").open("wb")
        process = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(base, process, started + 600)
            healthy = time.monotonic()
            _first_reply(base)
            done = time.monotonic()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    print(f"clone + make run to /health: {healthy - started:.1f} s")
    print(f"sign in + first streamed reply in Chromium: {done - healthy:.1f} s")
    print(f"total: {done - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
