"""How a one-time code reaches its number: in the response (the brief's local and demo mode), in
the log (development), or by SMS through Twilio's Messaging API."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from gemini_backend.config import Settings
from gemini_backend.core.errors import AppError

log = structlog.get_logger(__name__)

MESSAGES = {
    "login": "Your sign-in code is {code}. It expires in {minutes} minutes. Never share it.",
    "reset": "Your password reset code is {code}. It expires in {minutes} minutes.",
}


class OtpDeliveryFailed(AppError):
    status_code = 502
    code = "otp_delivery_failed"
    detail = "The code could not be sent; try again in a moment."
    keeps_changes = True  # the undelivered code is withdrawn


class OtpSender(Protocol):
    # True when the code is returned in the response body instead of being sent.
    in_response: bool

    async def send(self, number: str, code: str, purpose: str, ttl_seconds: int) -> None: ...

    async def aclose(self) -> None: ...


class ResponseSender:
    in_response = True

    async def send(self, number: str, code: str, purpose: str, ttl_seconds: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


class LogSender:
    """Development: the code is written to the log, never to the response."""

    in_response = False

    async def send(self, number: str, code: str, purpose: str, ttl_seconds: int) -> None:
        log.warning("otp_code", mobile_number=number, purpose=purpose, code=code)

    async def aclose(self) -> None:
        return None


class TwilioSender:
    in_response = False

    def __init__(self, settings: Settings) -> None:
        # Imported here, only when used: the SDK and aiohttp cost every process ~0.4 s at start.
        import aiohttp
        from twilio.base.exceptions import TwilioException
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        assert settings.twilio_account_sid
        assert settings.twilio_auth_token
        self._failures = (TwilioException, aiohttp.ClientError, OSError, TimeoutError)
        self._http = AsyncTwilioHttpClient(timeout=settings.otp_delivery_timeout_seconds)
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
        )
        if settings.twilio_api_base_url:
            self._client.api.base_url = settings.twilio_api_base_url.rstrip("/")
        self._timeout = settings.otp_delivery_timeout_seconds
        self._from = settings.twilio_from_number
        self._service = settings.twilio_messaging_service_sid

    async def send(self, number: str, code: str, purpose: str, ttl_seconds: int) -> None:
        body = MESSAGES[purpose].format(code=code, minutes=max(1, ttl_seconds // 60))
        sender = (
            {"messaging_service_sid": self._service} if self._service else {"from_": self._from}
        )
        try:
            # The SDK's async client does not apply its own timeout to requests.
            async with asyncio.timeout(self._timeout):
                message = await self._client.messages.create_async(to=number, body=body, **sender)
        except self._failures as exc:
            log.warning("otp_delivery_failed", error=type(exc).__name__, status=_status(exc))
            raise OtpDeliveryFailed() from exc
        log.info("otp_sent", message_sid=message.sid, purpose=purpose)

    async def aclose(self) -> None:
        await self._http.close()


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def create_otp_sender(settings: Settings) -> OtpSender:
    if settings.otp_delivery == "twilio":
        return TwilioSender(settings)
    if settings.otp_delivery == "log":
        return LogSender()
    return ResponseSender()
