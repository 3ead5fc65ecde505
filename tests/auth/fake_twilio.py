"""A local stand-in for Twilio's Messaging API (`POST /2010-04-01/Accounts/{sid}/Messages.json`),
checking what the official SDK sends on the wire: Basic auth, form fields, the account path."""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "7" * 32
AUTH_TOKEN = "fake-twilio-auth-token"
FROM_NUMBER = "+15005550006"


@dataclass
class FakeTwilio:
    url: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    # Set to answer every message with this Twilio error status (400, 429, 500...).
    fail_with: int | None = None
    # Set to hold every message without an answer until the fake stops.
    hang: bool = False
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._message)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _message(self, request: web.Request) -> web.Response:
        expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return _error(401, 20003, "Authenticate")
        if request.match_info["sid"] != ACCOUNT_SID:
            return _error(404, 20404, "The requested resource was not found")
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(400, 21000, "Form encoding expected")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if self.hang:
            await self._released.wait()
        if self.fail_with is not None:
            return _error(self.fail_with, 21211, "Invalid 'To' Phone Number")
        if not form.get("To") or not form.get("Body"):
            return _error(400, 21604, "A 'To' phone number and a 'Body' are required")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return _error(400, 21603, "A 'From' phone number is required")
        self.messages.append(form)
        return web.json_response(_message_resource(form), status=201)


def _message_resource(form: dict[str, str]) -> dict[str, Any]:
    sid = "SM" + secrets.token_hex(16)
    return {
        "sid": sid,
        "account_sid": ACCOUNT_SID,
        "to": form["To"],
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "body": form["Body"],
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
    }


def _error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": "", "status": status}
    return web.json_response(body, status=status)
