"""Tokens, password hashing and OTP digests.

- Access tokens: HS256 JWTs (no other algorithm is accepted) with `sub`, `sid` (the session),
  `typ`, `iat`, `exp`; expiry is checked against the injected clock.
- Refresh tokens: opaque random strings, stored only as SHA-256 digests.
- Passwords: Argon2id via pwdlib, computed in a worker thread with bounded concurrency so the
  event loop never blocks and memory stays bounded under a login storm.
- OTPs: 6 digits from `secrets`, stored as an HMAC keyed with a server-side secret.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from gemini_backend.core.errors import ServiceUnavailable, Unauthorized

JWT_ALGORITHM = "HS256"
MAX_ID = 2**63 - 1  # core.db.MAX_ID: the largest id a BIGINT holds
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds
ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret


class InvalidToken(Unauthorized):
    code = "invalid_token"
    detail = "The access token is invalid or has been revoked."


class ExpiredToken(Unauthorized):
    code = "token_expired"
    detail = "The access token has expired."


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: int
    issued_at: datetime
    expires_at: datetime


class TokenCodec:
    # Verified tokens are remembered (signature and claims; the expiry is still checked on every
    # use): a client sends the same token on every request until it expires, and decoding it
    # was a tenth of the CPU of a signed-in request. Bounded, and per process.
    VERIFIED_CACHE_SIZE = 8192

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._verified = functools.lru_cache(maxsize=self.VERIFIED_CACHE_SIZE)(self._verify)
        self._rotation_key = hmac.new(secret.encode(), b"refresh-rotation", hashlib.sha256).digest()

    def successor_refresh_token(self, token: str) -> str:
        return successor_refresh_token(self._rotation_key, token)

    def issue_access_token(self, user_id: int, session_id: int, now: datetime) -> str:
        payload = {
            "sub": str(user_id),
            "sid": session_id,
            "typ": ACCESS_TOKEN_TYPE,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_seconds)).timestamp()),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(payload, self._secret, algorithm=JWT_ALGORITHM)

    def decode_access_token(self, token: str, now: datetime) -> AccessClaims:
        user_id, session_id, issued, expires = self._verified(token)
        expires_at = datetime.fromtimestamp(expires, tz=now.tzinfo)
        if now >= expires_at:
            raise ExpiredToken()
        return AccessClaims(
            user_id, session_id, datetime.fromtimestamp(issued, tz=now.tzinfo), expires_at
        )

    def _verify(self, token: str) -> tuple[int, int, int, int]:
        """(user id, session id, iat, exp) of a token whose signature and claims are valid."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                # Expiry is checked below against the injected clock, not the wall clock.
                options={
                    "require": ["exp", "iat", "sub", "typ"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        try:
            if claims["typ"] != ACCESS_TOKEN_TYPE:
                raise InvalidToken()
            ids = int(claims["sub"]), int(claims["sid"])
            times = int(claims["iat"]), int(claims["exp"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidToken() from exc
        # Signed by us, yet a value no token of ours holds (a database id, a date a datetime
        # holds) is as invalid as a bad signature, not an error further on.
        if not all(1 <= value <= MAX_ID for value in ids) or not all(
            0 <= value <= MAX_TIMESTAMP for value in times
        ):
            raise InvalidToken()
        return ids[0], ids[1], times[0], times[1]


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def successor_refresh_token(key: bytes, token: str) -> str:
    """The token that replaces `token` when it is rotated. Derived, not random, so that a
    second use of `token` within the reuse grace can answer the same successor (only its digest
    is stored); unguessable without both the server key and `token` itself."""
    mac = hmac.new(key, b"refresh-rotation\x00" + token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def digest_token(token: str) -> str:
    """SHA-256 of a high-entropy token: enough for lookup, useless to whoever reads the table."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_otp() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def otp_digest(key: bytes, mobile_number: str, purpose: str, code: str) -> str:
    message = f"{purpose}\x00{mobile_number}\x00{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class HashingBusy(ServiceUnavailable):
    code = "busy"
    detail = "Too many sign-ins are being processed; try again in a moment."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class PasswordHasher:
    """Argon2id hashing off the event loop, at most `concurrency` hashes at a time and at most
    `queue` more waiting: a flood of anonymous requests gets 503 at once instead of delaying
    every real sign-in behind it."""

    def __init__(
        self, concurrency: int, queue: int = 32, hasher: Argon2Hasher | None = None
    ) -> None:
        self._hasher = PasswordHash((hasher or Argon2Hasher(),))
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._capacity = concurrency + queue
        self._pending = 0
        self._dummy_hash: str | None = None

    def ensure_room(self) -> None:
        """Raise 503 now if a hash would be refused: for flows that spend something (a code)
        before they hash."""
        if self._pending >= self._capacity:
            raise HashingBusy()

    async def _run(self, function: Any, *args: str) -> Any:
        self.ensure_room()
        self._pending += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        finally:
            self._pending -= 1

    async def hash(self, password: str) -> str:
        result: str = await self._run(self._hasher.hash, password)
        return result

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password; with no stored hash, burn the same time and answer False."""
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            await self._run(self._hasher.verify, password, self._dummy_hash)
            return False
        return bool(await self._run(self._hasher.verify, password, password_hash))
