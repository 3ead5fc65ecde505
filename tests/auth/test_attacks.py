"""What an attacker tried on sign-in (issue 16): concurrent guessing bursts, pre-hijacked
accounts, lockout as a weapon, anonymous CPU, and the aliases other clients send."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import select

from gemini_backend.auth.models import AuthGuard, OtpCode
from gemini_backend.core.security import PasswordHasher
from tests.helpers import bearer, new_number, request_otp, sign_in

PASSWORD = "sunflower-ladder-91"
ATTACKER_PASSWORD = "attacker-knows-this-77"
# The per-address limit is tested on its own; the bursts test the per-number guards.
NO_ADDRESS_LIMIT = {"auth_attempts_per_ip_per_minute": 10_000}


@asynccontextmanager
async def client_from(app: Any, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def login(client: httpx.AsyncClient, number: str, password: str) -> httpx.Response:
    return await client.post("/auth/login", json={"mobile_number": number, "password": password})


async def verify(client: httpx.AsyncClient, number: str, otp: str, **extra: str) -> httpx.Response:
    return await client.post(
        "/auth/verify-otp", json={"mobile_number": number, "otp": otp, **extra}
    )


def wrong(otp: str, offset: int = 1) -> str:
    return f"{(int(otp) + offset) % 1_000_000:06d}"


async def with_password(client: httpx.AsyncClient, password: str = PASSWORD) -> str:
    number = new_number()
    assert (
        await client.post("/auth/signup", json={"mobile_number": number, "password": password})
    ).status_code == 201
    otp = await request_otp(client, number)
    assert (await verify(client, number, otp, password=password)).status_code == 200
    return number


async def guard_failures(app: Any, number: str) -> dict[str, int]:
    async with app.state.services.database.sessionmaker() as session:
        rows = (
            await session.execute(
                select(AuthGuard.subject, AuthGuard.failures).where(
                    AuthGuard.subject.startswith(number)
                )
            )
        ).all()
    return {subject: failures for subject, failures in rows}


async def otp_row(app: Any, number: str) -> OtpCode | None:
    async with app.state.services.database.sessionmaker() as session:
        row: OtpCode | None = (
            await session.execute(select(OtpCode).where(OtpCode.mobile_number == number))
        ).scalar_one_or_none()
        return row


# --- concurrent guessing ------------------------------------------------------------------


class TestBursts:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return NO_ADDRESS_LIMIT

    @pytest.mark.parametrize("trial", range(3))
    async def test_100_concurrent_password_guesses_check_at_most_the_threshold(self, client, trial):
        number = await with_password(client)
        guesses = [f"wrong-guess-{i:03d}-xx" for i in range(100)]
        responses = await asyncio.gather(*(login(client, number, g) for g in guesses))
        statuses = [r.status_code for r in responses]
        assert statuses.count(401) == 10, statuses
        assert statuses.count(429) == 90
        assert {r.json()["code"] for r in responses if r.status_code == 429} == {
            "too_many_attempts"
        }
        # The right password now finds the number locked.
        assert (await login(client, number, PASSWORD)).status_code == 429

    @pytest.mark.parametrize("trial", range(3))
    async def test_60_concurrent_otp_guesses_check_at_most_five(self, client, app, trial):
        number = new_number()
        otp = await request_otp(client, number)
        guesses = [wrong(otp, i) for i in range(1, 61)]
        responses = await asyncio.gather(*(verify(client, number, g) for g in guesses))
        assert {r.status_code for r in responses} == {401}
        # Five tries were checked against the code (it is burned), and only those counted.
        row = await otp_row(app, number)
        assert row is not None
        assert row.failed_attempts == 5
        failures = await guard_failures(app, number)
        assert len(failures) == 2
        assert set(failures.values()) == {5}, failures
        # The right code, once burned, is refused.
        assert (await verify(client, number, otp)).status_code == 401

    async def test_concurrent_wrong_current_passwords_check_at_most_the_threshold(self, client):
        number = await with_password(client)
        tokens = (await login(client, number, PASSWORD)).json()
        bodies = [
            {"current_password": f"wrong-guess-{i:03d}-xx", "new_password": "new-pass-phrase-1"}
            for i in range(40)
        ] + [{"current_password": PASSWORD, "new_password": "new-pass-phrase-1"}]
        responses = await asyncio.gather(
            *(
                client.post("/auth/change-password", json=body, headers=bearer(tokens))
                for body in bodies
            )
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(401) <= 10, statuses
        assert statuses[-1] == 429
        assert (await login(client, number, PASSWORD)).status_code == 429


# --- pre-hijacking ------------------------------------------------------------------------


async def test_a_signup_password_is_not_usable_before_the_number_is_proven(client):
    number = new_number()
    signup = await client.post(
        "/auth/signup", json={"mobile_number": number, "password": ATTACKER_PASSWORD}
    )
    assert signup.status_code == 201
    assert signup.json()["has_password"] is False
    refused = await login(client, number, ATTACKER_PASSWORD)
    assert refused.status_code == 401
    assert refused.json()["code"] == "verification_required"
    # A wrong password says nothing about a pending one.
    assert (await login(client, number, "some-other-pass-1")).json()["code"] == (
        "invalid_credentials"
    )


async def test_the_owner_signing_in_by_otp_drops_a_password_set_by_someone_else(client):
    victim = new_number()
    assert (
        await client.post(
            "/auth/signup", json={"mobile_number": victim, "password": ATTACKER_PASSWORD}
        )
    ).status_code == 201
    # The owner of the number signs in with a code, as they always do, and uses the account.
    tokens = (await verify(client, victim, await request_otp(client, victim))).json()
    assert tokens["user"]["has_password"] is False
    room = await client.post("/chatroom", json={"name": "private"}, headers=bearer(tokens))
    assert room.status_code == 201
    # The attacker's password opens nothing.
    refused = await login(client, victim, ATTACKER_PASSWORD)
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_credentials"


async def test_whoever_set_the_signup_password_activates_it_with_the_first_code(client):
    number = new_number()
    await client.post("/auth/signup", json={"mobile_number": number, "password": PASSWORD})
    otp = await request_otp(client, number)
    verified = await verify(client, number, otp, password=PASSWORD)
    assert verified.status_code == 200
    assert verified.json()["user"]["has_password"] is True
    assert (await login(client, number, PASSWORD)).status_code == 200


async def test_a_wrong_password_at_the_first_code_drops_the_pending_one(client):
    number = new_number()
    await client.post("/auth/signup", json={"mobile_number": number, "password": PASSWORD})
    otp = await request_otp(client, number)
    verified = await verify(client, number, otp, password="not-the-pending-1")
    assert verified.status_code == 200
    assert verified.json()["user"]["has_password"] is False
    assert (await login(client, number, PASSWORD)).json()["code"] == "invalid_credentials"


async def test_a_first_password_needs_a_fresh_code_not_only_a_token(client):
    tokens = await sign_in(client)
    response = await client.post(
        "/auth/change-password", json={"new_password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 422
    assert response.json()["code"] == "otp_required"
    me = await client.get("/user/me", headers=bearer(tokens))
    assert me.json()["has_password"] is False


# --- lockout as a weapon ------------------------------------------------------------------


class TestLockoutAsAWeapon:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return NO_ADDRESS_LIMIT

    async def test_one_address_cannot_lock_a_number_for_its_owner(self, app, client):
        number = new_number()
        otp = await request_otp(client, number)
        async with client_from(app, "203.0.113.66") as attacker:
            for i in range(1, 6):
                assert (await verify(attacker, number, wrong(otp, i))).status_code == 401
            app.state.services.clock.advance(31)  # a fresh code for five more guesses
            fresh = (await attacker.post("/auth/send-otp", json={"mobile_number": number})).json()[
                "otp"
            ]
            for i in range(1, 6):
                assert (await verify(attacker, number, wrong(fresh, i))).status_code == 401
            locked = await verify(attacker, number, "000000")
            assert locked.status_code == 429
            assert locked.json()["code"] == "too_many_attempts"
            assert (
                await attacker.post("/auth/send-otp", json={"mobile_number": number})
            ).status_code == 429
        # The owner, from their own address, still gets a code and signs in.
        app.state.services.clock.advance(31)
        own = await request_otp(client, number)
        assert (await verify(client, number, own)).status_code == 200

    async def test_an_ipv6_prefix_counts_as_one_address(self, app):
        number = new_number()
        async with client_from(app, "2001:db8:1:2::10") as first:
            otp = await request_otp(first, number)
            for i in range(1, 6):
                assert (await verify(first, number, wrong(otp, i))).status_code == 401
        app.state.services.clock.advance(31)
        async with client_from(app, "2001:db8:1:2::99") as second:  # the same /64
            fresh = await request_otp(second, number)
            for i in range(1, 6):
                assert (await verify(second, number, wrong(fresh, i))).status_code == 401
            locked = await second.post("/auth/send-otp", json={"mobile_number": number})
            assert locked.status_code == 429
            assert locked.json()["code"] == "too_many_attempts"
        async with client_from(app, "2001:db8:1:3::10") as elsewhere:  # another /64
            app.state.services.clock.advance(31)
            assert (
                await elsewhere.post("/auth/send-otp", json={"mobile_number": number})
            ).status_code == 200

    async def test_many_addresses_together_lock_the_number_at_the_higher_threshold(self, app):
        number = new_number()
        app.state.services.settings.otp_number_lockout_threshold = 12  # type: ignore[misc]
        app.state.services.settings.otp_sends_per_number_per_hour = 100  # type: ignore[misc]
        statuses = []
        for i in range(13):
            async with client_from(app, f"203.0.113.{i + 1}") as c:
                app.state.services.clock.advance(31)
                otp = (await c.post("/auth/send-otp", json={"mobile_number": number})).json()
                if "otp" in otp:
                    statuses.append((await verify(c, number, wrong(otp["otp"]))).status_code)
                else:
                    statuses.append(429)
        assert statuses[:12] == [401] * 12
        assert statuses[12] == 429

    async def test_guesses_with_no_live_code_are_not_counted(self, client):
        number = new_number()
        for _ in range(20):
            assert (await verify(client, number, "000000")).status_code == 401
        otp = await request_otp(client, number)
        assert (await verify(client, number, otp)).status_code == 200

    async def test_refused_sends_do_not_spend_the_number_budget(self, app, client):
        app.state.services.settings.otp_sends_per_number_per_hour = 2  # type: ignore[misc]
        number = new_number()
        await request_otp(client, number)
        for _ in range(5):
            too_soon = await client.post("/auth/send-otp", json={"mobile_number": number})
            assert too_soon.json()["code"] == "otp_resend_too_soon"
        app.state.services.clock.advance(31)
        assert (
            await client.post("/auth/send-otp", json={"mobile_number": number})
        ).status_code == 200
        app.state.services.clock.advance(31)
        spent = await client.post("/auth/send-otp", json={"mobile_number": number})
        assert spent.status_code == 429
        assert spent.json()["code"] == "rate_limited"


# --- anonymous CPU ------------------------------------------------------------------------


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(2, 8)
        self.hashes = 0

    async def hash(self, password: str) -> str:
        self.hashes += 1
        return await super().hash(password)


async def test_reset_with_a_wrong_code_and_signup_of_a_taken_number_hash_nothing(app, client):
    number = await with_password(client)
    counting = CountingHasher()
    app.state.services.auth = _replace(app.state.services.auth, hasher=counting)
    await client.post("/auth/forgot-password", json={"mobile_number": number})
    wrong_reset = await client.post(
        "/auth/reset-password",
        json={"mobile_number": number, "otp": "000000", "new_password": "brand-new-phrase-9"},
    )
    assert wrong_reset.status_code == 401
    taken = await client.post(
        "/auth/signup", json={"mobile_number": number, "password": "another-phrase-42"}
    )
    assert taken.status_code == 409
    assert counting.hashes == 0


class BlockingArgon2(Argon2Hasher):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        self.started.release()
        self.release.wait(30)
        return False


async def test_a_full_hashing_queue_answers_503_at_once(app, client):
    number = await with_password(client)
    blocking = BlockingArgon2()
    # One hash at a time and none waiting: while one runs, the next request is refused.
    app.state.services.auth = _replace(
        app.state.services.auth, hasher=PasswordHasher(1, 0, hasher=blocking)
    )
    running = asyncio.ensure_future(login(client, number, "guess-one-xx-1"))
    assert await asyncio.to_thread(blocking.started.acquire, True, 30)
    busy = await login(client, number, "guess-two-xx-2")
    assert busy.status_code == 503
    assert busy.json()["code"] == "busy"
    assert busy.headers["Retry-After"] == "1"
    blocking.release.set()
    assert (await running).status_code == 401


def _replace(deps: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(deps, **changes)


class TestPerAddressLimits:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"auth_attempts_per_ip_per_minute": 3}

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/auth/login", {"password": "whatever-pass-1"}),
            ("/auth/verify-otp", {"otp": "000000"}),
            ("/auth/reset-password", {"otp": "000000", "new_password": "brand-new-phrase-9"}),
            ("/auth/signup", {}),
        ],
        ids=["login", "verify", "reset", "signup"],
    )
    async def test_each_anonymous_route_is_limited_per_address(self, app, client, path, body):
        statuses = [
            (await client.post(path, json={"mobile_number": new_number(), **body})).status_code
            for _ in range(4)
        ]
        assert 429 not in statuses[:3]
        assert statuses[3] == 429
        async with client_from(app, "203.0.113.200") as other:
            response = await other.post(path, json={"mobile_number": new_number(), **body})
            assert response.status_code != 429


# --- other people's clients ---------------------------------------------------------------


async def test_aliases_other_clients_send(client):
    number = new_number()
    signup = await client.post("/auth/signup", json={"mobile_number": number, "full_name": "Asha"})
    assert signup.json()["name"] == "Asha"
    otp = await request_otp(client, number)
    tokens = await client.post("/auth/verify-otp", json={"mobile_number": number, "otp_code": otp})
    assert tokens.status_code == 200, tokens.text
    headers = bearer(tokens.json())
    room = (await client.post("/chatroom", json={"name": "r"}, headers=headers)).json()
    sent = await client.post(
        f"/chatroom/{room['id']}/message", json={"user_message": "hello"}, headers=headers
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["user_message"]["content"] == "hello"
