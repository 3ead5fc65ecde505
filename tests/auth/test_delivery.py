"""How codes reach a number (docs/api.md, Auth): SMS through Twilio's SDK against a local fake, the
log in development, and the response body only where that is allowed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from gemini_backend.config import Settings
from gemini_backend.main import create_app
from tests.auth.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio
from tests.helpers import new_number


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def code_in(message: dict[str, str]) -> str:
    match = re.search(r"\b(\d{6})\b", message["Body"])
    assert match, message
    return match.group(1)


class TestTwilio:
    @pytest.fixture
    def settings_overrides(self, twilio: FakeTwilio) -> dict[str, Any]:
        return {
            "otp_delivery": "twilio",
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_from_number": FROM_NUMBER,
            "twilio_api_base_url": twilio.url,
            "otp_delivery_timeout_seconds": 1,
        }

    async def test_the_code_goes_by_sms_and_never_in_the_response(self, client, twilio):
        number = new_number()
        response = await client.post("/auth/send-otp", json={"mobile_number": number})
        assert response.status_code == 200, response.text
        assert "otp" not in response.json()
        (message,) = twilio.messages
        assert message["To"] == number
        assert message["From"] == FROM_NUMBER
        assert "sign-in code" in message["Body"]
        code = code_in(message)
        assert code not in response.text
        verified = await client.post(
            "/auth/verify-otp", json={"mobile_number": number, "otp": code}
        )
        assert verified.status_code == 200, verified.text

    async def test_reset_codes_go_only_to_numbers_with_an_account(self, client, twilio, clock):
        number = new_number()
        unknown = await client.post("/auth/forgot-password", json={"mobile_number": number})
        assert unknown.status_code == 200
        assert twilio.messages == []
        await client.post("/auth/signup", json={"mobile_number": number})
        clock.advance(31)
        known = await client.post("/auth/forgot-password", json={"mobile_number": number})
        assert known.json() == unknown.json()
        (message,) = twilio.messages
        assert "reset code" in message["Body"]

    async def test_an_undelivered_code_is_withdrawn_and_502(self, client, twilio):
        number = new_number()
        twilio.fail_with = 400
        failed = await client.post("/auth/send-otp", json={"mobile_number": number})
        assert failed.status_code == 502
        assert failed.json()["code"] == "otp_delivery_failed"
        # Nothing was sent, so asking again at once is not "too soon".
        twilio.fail_with = None
        again = await client.post("/auth/send-otp", json={"mobile_number": number})
        assert again.status_code == 200, again.text
        assert len(twilio.messages) == 1

    async def test_a_twilio_that_does_not_answer_is_502_after_the_timeout(self, client, twilio):
        twilio.hang = True
        failed = await asyncio.wait_for(
            client.post("/auth/send-otp", json={"mobile_number": new_number()}), 10
        )
        assert failed.status_code == 502
        assert failed.json()["code"] == "otp_delivery_failed"

    async def test_twilio_unreachable_is_502(self, client, twilio):
        await twilio.stop()
        failed = await client.post("/auth/send-otp", json={"mobile_number": new_number()})
        assert failed.status_code == 502
        assert failed.json()["code"] == "otp_delivery_failed"


class TestLogDelivery:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"otp_delivery": "log"}

    async def test_the_code_is_not_in_the_response(self, client):
        number = new_number()
        with capture_logs() as logs:
            response = await client.post("/auth/send-otp", json={"mobile_number": number})
        assert response.status_code == 200
        assert "otp" not in response.json()
        (logged,) = [line for line in logs if line["event"] == "otp_code"]
        assert logged["mobile_number"] == number
        verified = await client.post(
            "/auth/verify-otp", json={"mobile_number": number, "otp": logged["code"]}
        )
        assert verified.status_code == 200


def production(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "environment": "production",
        "jwt_secret": "k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789",
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def test_production_refuses_codes_in_responses_unless_said_on_purpose():
    with pytest.raises(ValidationError, match="OTP_RESPONSE_IN_PRODUCTION"):
        production()
    assert production(otp_response_in_production=True).otp_response_exposed
    with pytest.raises(ValidationError, match="OTP_DELIVERY=log"):
        production(otp_delivery="log")  # the log is no place for codes either


def test_twilio_needs_its_credentials():
    with pytest.raises(ValidationError, match="TWILIO_ACCOUNT_SID"):
        production(otp_delivery="twilio")
    with pytest.raises(ValidationError, match="TWILIO_FROM_NUMBER"):
        production(otp_delivery="twilio", twilio_account_sid=ACCOUNT_SID, twilio_auth_token="t")


async def test_a_demo_in_production_says_codes_are_exposed(make_settings, clock):
    settings = make_settings(
        environment="production",
        jwt_secret="k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789",
        otp_response_in_production=True,
    )
    app = create_app(settings, clock=clock)
    with capture_logs() as logs:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                body = (await client.get("/ready")).json()
    assert body["otp_delivery"] == "response"
    assert "anyone can sign in as anyone" in body["warning"]
    assert any(line["event"] == "otp_codes_in_responses" for line in logs)
