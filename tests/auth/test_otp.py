"""OTP sign-in-or-up: codes, expiry, single use, burning, lockout, cooldown, throttles."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from gemini_backend.auth.models import OtpCode
from tests.helpers import bearer, new_number, request_otp, sign_in


async def verify(client, number, otp):
    return await client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp})


def wrong(otp: str) -> str:
    return f"{(int(otp) + 1) % 1_000_000:06d}"


async def test_send_otp_returns_a_six_digit_code(client):
    response = await client.post("/auth/send-otp", json={"mobile_number": new_number()})
    assert response.status_code == 200
    body = response.json()
    assert body["message"]
    assert body["expires_in"] == 300
    assert len(body["otp"]) == 6
    assert body["otp"].isdigit()


async def test_verify_creates_the_account_once(client):
    number = new_number()
    first = await sign_in(client, number)
    assert first["is_new_user"] is True
    assert first["user"]["mobile_number"] == number
    assert first["user"]["has_password"] is False
    second = await sign_in(client, number)
    assert second["is_new_user"] is False
    assert second["user"]["id"] == first["user"]["id"]


@pytest.mark.parametrize("field", ["mobile_number", "mobile", "phone", "mobileNumber"])
async def test_number_aliases_and_default_region(client, field):
    response = await client.post("/auth/send-otp", json={field: "98765 43210"})
    assert response.status_code == 200, response.text
    tokens = await verify(client, "+919876543210", response.json()["otp"])
    assert tokens.status_code == 200
    assert tokens.json()["user"]["mobile_number"] == "+919876543210"


async def test_code_alias_on_verify(client):
    number = new_number()
    otp = await request_otp(client, number)
    response = await client.post("/auth/verify-otp", json={"phone": number, "code": otp})
    assert response.status_code == 200


@pytest.mark.parametrize("number", ["12345", "not a number", "+1 555", "", "+91" + "9" * 30])
async def test_invalid_numbers_are_422(client, number):
    response = await client.post("/auth/send-otp", json={"mobile_number": number})
    assert response.status_code == 422
    assert response.json()["code"] in {"invalid_mobile_number", "validation_error"}


@pytest.mark.parametrize("otp", ["12345", "1234567", "abcdef", ""])
async def test_malformed_codes_are_422(client, otp):
    response = await verify(client, new_number(), otp)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_wrong_code_is_401_and_same_for_unknown_numbers(client):
    number = new_number()
    otp = await request_otp(client, number)
    known = await verify(client, number, wrong(otp))
    unknown = await verify(client, new_number(), "123456")
    assert known.status_code == unknown.status_code == 401
    assert known.json() == unknown.json()
    assert known.json()["code"] == "invalid_credentials"


async def test_code_is_single_use(client):
    number = new_number()
    otp = await request_otp(client, number)
    assert (await verify(client, number, otp)).status_code == 200
    again = await verify(client, number, otp)
    assert again.status_code == 401


async def test_code_expires_after_five_minutes(client, clock):
    number = new_number()
    otp = await request_otp(client, number)
    clock.advance(299)
    assert (await verify(client, number, wrong(otp))).status_code == 401  # still live, wrong
    otp = await _resend(client, clock, number)
    clock.advance(300)
    assert (await verify(client, number, otp)).status_code == 401


async def _resend(client, clock, number) -> str:
    clock.advance(30)
    return await request_otp(client, number)


async def test_five_wrong_tries_burn_the_code(client):
    number = new_number()
    otp = await request_otp(client, number)
    for _ in range(5):
        assert (await verify(client, number, wrong(otp))).status_code == 401
    assert (await verify(client, number, otp)).status_code == 401


async def test_four_wrong_tries_do_not_burn_it(client):
    number = new_number()
    otp = await request_otp(client, number)
    for _ in range(4):
        assert (await verify(client, number, wrong(otp))).status_code == 401
    assert (await verify(client, number, otp)).status_code == 200


async def test_new_code_replaces_the_previous_one(client, clock):
    number = new_number()
    first = await request_otp(client, number)
    second = await _resend(client, clock, number)
    if first != second:
        assert (await verify(client, number, first)).status_code == 401
    assert (await verify(client, number, second)).status_code == 200


async def test_resend_cooldown(client, clock):
    number = new_number()
    await request_otp(client, number)
    clock.advance(10)
    response = await client.post("/auth/send-otp", json={"mobile_number": number})
    assert response.status_code == 429
    assert response.json()["code"] == "otp_resend_too_soon"
    assert response.headers["Retry-After"] == "20"
    clock.advance(20)
    assert (await client.post("/auth/send-otp", json={"mobile_number": number})).status_code == 200


async def test_ten_failures_lock_the_number_for_fifteen_minutes(client, clock):
    number = new_number()
    otp = await request_otp(client, number)
    for attempt in range(10):
        if attempt and attempt % 4 == 0:
            otp = await _resend(client, clock, number)  # a new code never resets the count
        assert (await verify(client, number, wrong(otp))).status_code == 401
    locked = await verify(client, number, otp)
    assert locked.status_code == 429
    assert locked.json()["code"] == "too_many_attempts"
    assert 800 < int(locked.headers["Retry-After"]) <= 900
    # No new code while locked either.
    clock.advance(30)
    assert (await client.post("/auth/send-otp", json={"mobile_number": number})).status_code == 429
    clock.advance(900)
    otp = await request_otp(client, number)
    assert (await verify(client, number, otp)).status_code == 200


async def test_success_resets_the_failure_count(client, clock):
    number = new_number()
    for _ in range(2):
        otp = await _resend(client, clock, number)
        for _ in range(4):
            assert (await verify(client, number, wrong(otp))).status_code == 401
        assert (await verify(client, number, otp)).status_code == 200
    otp = await _resend(client, clock, number)
    assert (await verify(client, number, otp)).status_code == 200


async def test_code_is_stored_only_as_a_keyed_hash(client, app):
    number = new_number()
    otp = await request_otp(client, number)
    async with app.state.services.database.sessionmaker() as session:
        row = (
            await session.execute(select(OtpCode).where(OtpCode.mobile_number == number))
        ).scalar_one()
    assert len(row.code_digest) == 64
    import hashlib

    assert row.code_digest != hashlib.sha256(otp.encode()).hexdigest()


async def test_twenty_concurrent_verifies_issue_exactly_one_token(client):
    number = new_number()
    otp = await request_otp(client, number)
    responses = await asyncio.gather(*(verify(client, number, otp) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    # The 19 losers are failed attempts; from the tenth on, the number is locked.
    assert set(statuses) <= {200, 401, 429}


async def test_concurrent_first_sign_ins_of_many_numbers(client):
    results = await asyncio.gather(*(sign_in(client) for _ in range(12)))
    ids = {r["user"]["id"] for r in results}
    assert len(ids) == 12
    for tokens in results:
        assert (await client.get("/user/me", headers=bearer(tokens))).status_code == 200


class TestThrottles:
    @pytest.fixture
    def settings_overrides(self):
        return {
            "otp_sends_per_ip_per_hour": 3,
            "otp_sends_per_number_per_hour": 2,
            "otp_resend_seconds": 0,
        }

    async def test_per_ip_send_throttle(self, client):
        for _ in range(3):
            assert (
                await client.post("/auth/send-otp", json={"mobile_number": new_number()})
            ).status_code == 200
        response = await client.post("/auth/send-otp", json={"mobile_number": new_number()})
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) > 0
        # Forgot-password shares the budget of the address.
        response = await client.post("/auth/forgot-password", json={"mobile_number": new_number()})
        assert response.status_code == 429

    async def test_per_number_send_throttle(self, app):
        import httpx

        number = new_number()
        statuses = []
        for i in range(3):  # from three different addresses
            transport = httpx.ASGITransport(app=app, client=(f"203.0.113.{i + 1}", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.post("/auth/send-otp", json={"mobile_number": number})
                statuses.append(r.status_code)
        assert statuses == [200, 200, 429]


class TestTestNumbers:
    @pytest.fixture
    def settings_overrides(self):
        return {"otp_test_numbers": "+15555550100:123456, 9876500001:654321"}

    async def test_fixed_codes_for_listed_numbers(self, client):
        response = await client.post("/auth/send-otp", json={"mobile_number": "+1 555-555-0100"})
        assert response.json()["otp"] == "123456"
        assert (await verify(client, "+15555550100", "123456")).status_code == 200
        # Entries without a country code take the default region (+91 here).
        response = await client.post("/auth/send-otp", json={"mobile_number": "+919876500001"})
        assert response.json()["otp"] == "654321"
        # A fictional number that is not listed is still refused.
        response = await client.post("/auth/send-otp", json={"mobile_number": "+15555550199"})
        assert response.status_code == 422

    async def test_other_numbers_still_get_random_codes(self, client):
        codes = {await request_otp(client, new_number()) for _ in range(5)}
        assert len(codes) > 1
