"""The service's HTTP API as the harness uses it to set up (httpx): sign-in, rooms, sends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def number(i: int, base: int) -> str:
    """A valid Indian mobile number in E.164 (`base` = 9_000_000_000 gives +919000000000...)."""
    return f"+91{base + i}"


async def bounded(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs with at most `limit` at a time; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


@dataclass
class User:
    number: str
    token: str
    user_id: int
    rooms: list[int]


class Api:
    def __init__(self, base_url: str, connections: int = 64) -> None:
        # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) could close
        # them under a request that reuses one (a ReadError race).
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
        )
        self.client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.aclose()

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def _json(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        for attempt in range(3):
            try:
                response = await self.client.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                # Only errors where the request cannot have been processed twice matter here:
                # a retried verify-otp would answer 401 and fail loudly below.
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)
        if response.status_code != expect:
            raise RuntimeError(
                f"{method} {path}: {response.status_code} {response.text[:300]} (wanted {expect})"
            )
        return response.json()

    async def send_otp(self, mobile: str) -> str:
        body = await self._json("POST", "/auth/send-otp", 200, json={"mobile_number": mobile})
        otp = body.get("otp")
        if not otp:
            raise RuntimeError(f"send-otp returned no code: {body}")
        return str(otp)

    async def verify(self, mobile: str, otp: str) -> tuple[str, int]:
        body = await self._json(
            "POST", "/auth/verify-otp", 200, json={"mobile_number": mobile, "otp": otp}
        )
        return body["access_token"], body["user"]["id"]

    async def sign_in(self, mobile: str) -> User:
        token, user_id = await self.verify(mobile, await self.send_otp(mobile))
        return User(mobile, token, user_id, [])

    async def create_room(self, token: str, name: str) -> int:
        body = await self._json(
            "POST", "/chatroom", 201, json={"name": name}, headers=self._auth(token)
        )
        return int(body["id"])

    async def send(self, token: str, room: int, content: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST",
            f"/chatroom/{room}/message",
            202,
            json={"content": content},
            headers=self._auth(token),
        )
        return result

    async def get(self, path: str, token: str) -> httpx.Response:
        return await self.client.get(path, headers=self._auth(token))
