"""Passwords: signup, login, lockout, change-password, forgot/reset-password (docs/api.md, Auth)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import func, select, update
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from gemini_backend.config import Settings
from gemini_backend.core.security import PasswordHasher
from gemini_backend.users.models import User
from tests.helpers import bearer, new_number, request_otp, sign_in

PASSWORD = "sunflower-ladder-91"
NEW_PASSWORD = "blue-otter-harbour-58"
COMMON_PASSWORDS = ["password123", "qwertyuiop"]
TOKEN_KEYS = {
    "access_token",
    "token_type",
    "token",
    "expires_in",
    "refresh_token",
    "is_new_user",
    "user",
}
USER_KEYS = {"id", "mobile_number", "name", "email", "tier", "has_password", "created_at"}
LOCKOUT_SECONDS = 15 * 60


# --- small client steps -------------------------------------------------------------------


async def signup(client: httpx.AsyncClient, number: str, **fields: Any) -> httpx.Response:
    return await client.post("/auth/signup", json={"mobile_number": number, **fields})


async def registered(client: httpx.AsyncClient, password: str = PASSWORD) -> str:
    """A fresh number signed up with `password`, activated by the first OTP verification."""
    number = new_number()
    response = await signup(client, number, password=password)
    assert response.status_code == 201, response.text
    otp = await request_otp(client, number)
    verified = await client.post(
        "/auth/verify-otp", json={"mobile_number": number, "otp": otp, "password": password}
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["has_password"] is True
    return number


async def login(client: httpx.AsyncClient, number: str, password: str) -> httpx.Response:
    return await client.post("/auth/login", json={"mobile_number": number, "password": password})


async def logged_in(client: httpx.AsyncClient, number: str, password: str = PASSWORD) -> dict:
    response = await login(client, number, password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def change_password(
    client: httpx.AsyncClient, tokens: dict | None, **body: Any
) -> httpx.Response:
    headers = bearer(tokens) if tokens else {}
    return await client.post("/auth/change-password", json=body, headers=headers)


async def forgot(client: httpx.AsyncClient, number: str) -> httpx.Response:
    return await client.post("/auth/forgot-password", json={"mobile_number": number})


async def reset_otp(client: httpx.AsyncClient, number: str) -> str:
    response = await forgot(client, number)
    assert response.status_code == 200, response.text
    otp: str = response.json()["otp"]
    return otp


async def reset(
    client: httpx.AsyncClient, number: str, otp: str, new_password: str = NEW_PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/reset-password",
        json={"mobile_number": number, "otp": otp, "new_password": new_password},
    )


async def verify(client: httpx.AsyncClient, number: str, otp: str) -> httpx.Response:
    return await client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp})


async def me(client: httpx.AsyncClient, tokens: dict) -> httpx.Response:
    return await client.get("/user/me", headers=bearer(tokens))


async def refresh(client: httpx.AsyncClient, tokens: dict) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})


def wrong(otp: str) -> str:
    return f"{(int(otp) + 1) % 1_000_000:06d}"


# --- assertions ---------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert set(body) == {"detail", "code"}
    assert body["detail"]
    return body


def assert_invalid_credentials(response: httpx.Response) -> dict:
    body = assert_error(response, 401, "invalid_credentials")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    return body


def assert_user(user: dict, number: str, *, has_password: bool, name=None, email=None) -> None:
    assert set(user) == USER_KEYS
    assert isinstance(user["id"], int)
    assert user["mobile_number"] == number
    assert user["name"] == name
    assert user["email"] == email
    assert user["tier"] == "basic"
    assert user["has_password"] is has_password
    assert user["created_at"] == "2026-11-22T10:00:00Z"  # the test clock's start


def assert_token_response(response: httpx.Response, number: str) -> dict:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "bearer"
    assert body["access_token"]
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 900
    assert body["refresh_token"]
    assert body["is_new_user"] is False
    assert_user(body["user"], number, has_password=True)
    return body


async def assert_tokens_work(client: httpx.AsyncClient, tokens: dict) -> None:
    assert (await me(client, tokens)).status_code == 200
    assert (await refresh(client, tokens)).status_code == 200


async def assert_tokens_refused(client: httpx.AsyncClient, tokens: dict) -> None:
    assert_error(await me(client, tokens), 401, "invalid_token")
    assert_error(await refresh(client, tokens), 401, "invalid_refresh_token")


async def assert_password_is(client: httpx.AsyncClient, number: str, good: str, bad: str) -> None:
    assert (await login(client, number, good)).status_code == 200
    assert_invalid_credentials(await login(client, number, bad))


async def count_users(app: Any) -> int:
    async with app.state.services.database.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(User))).scalar_one()


# --- signup -------------------------------------------------------------------------------


def test_chosen_passwords_fit_the_policy():
    common = {p.lower() for p in FREQUENCY_LISTS["passwords"]}
    assert all(p in common for p in COMMON_PASSWORDS)
    assert PASSWORD not in common
    assert NEW_PASSWORD not in common


async def test_signup_with_password_and_details(client):
    number = new_number()
    response = await signup(
        client, number, name="Asha", email="asha@example.com", password=PASSWORD
    )
    assert response.status_code == 201, response.text
    # Pending until the number is proven (see the pre-hijacking tests).
    assert_user(response.json(), number, has_password=False, name="Asha", email="asha@example.com")
    assert PASSWORD not in response.text


async def test_signup_name_with_a_nul_character_is_422(client):
    number = new_number()
    response = await signup(client, number, name="As\x00ha")
    assert response.status_code == 422, response.text
    assert (await signup(client, number, name="Asha")).status_code == 201  # nothing was stored


async def test_signup_without_password(client):
    number = new_number()
    response = await signup(client, number)
    assert response.status_code == 201, response.text
    assert_user(response.json(), number, has_password=False)


@pytest.mark.parametrize("field", ["mobile_number", "mobile", "phone", "mobileNumber"])
async def test_signup_number_aliases(client, field):
    number = new_number()
    response = await client.post("/auth/signup", json={field: number})
    assert response.status_code == 201, response.text
    assert response.json()["mobile_number"] == number


@pytest.mark.parametrize("local", ["{n}", "0{n}", "{a} {b}", "{a}-{b}"])
async def test_signup_local_number_takes_plus_91(client, local):
    number = new_number()
    digits = number.removeprefix("+91")
    raw = local.format(n=digits, a=digits[:5], b=digits[5:])
    response = await signup(client, raw)
    assert response.status_code == 201, response.text
    assert response.json()["mobile_number"] == number


@pytest.mark.parametrize(
    "second",
    ["{e164}", "{local}", "0{local}", "+91 {a} {b}", "{a}-{b}", "0091{local}"],
)
async def test_second_signup_of_a_number_is_409(client, app, second):
    number = await registered(client)
    local = number.removeprefix("+91")
    raw = second.format(e164=number, local=local, a=local[:5], b=local[5:])
    again = await signup(client, raw, name="Someone else", password=NEW_PASSWORD)
    assert_error(again, 409, "user_exists")
    # The first account is untouched.
    assert await count_users(app) == 1
    await assert_password_is(client, number, PASSWORD, NEW_PASSWORD)


@pytest.mark.parametrize(
    "raw", ["12345", "not a number", "+1 555", "+91 00000 00000", "+9198765432101"]
)
async def test_signup_invalid_number_is_422(client, app, raw):
    assert_error(await signup(client, raw), 422, "invalid_mobile_number")
    assert await count_users(app) == 0


@pytest.mark.parametrize(
    ("fields", "field", "error_type"),
    [
        ({"email": "not-an-email"}, "email", "value_error"),
        ({"email": "a@b"}, "email", "value_error"),
        ({"password": "x" * 7}, "password", "string_too_short"),
        ({"password": "x" * 129}, "password", "string_too_long"),
    ],
    ids=["email-no-at", "email-no-domain", "password-7", "password-129"],
)
async def test_signup_invalid_fields_are_422(client, app, fields, field, error_type):
    number = new_number()
    response = await signup(client, number, **fields)
    body = assert_error(response, 422, "validation_error")
    assert [(e["loc"], e["type"]) for e in body["detail"]] == [(["body", field], error_type)]
    assert next(iter(fields.values())) not in response.text  # the input is not echoed
    assert await count_users(app) == 0
    assert (await signup(client, number)).status_code == 201


async def test_password_length_bounds_are_inclusive(client):
    for password in ("ab3$" * 2, "ab3$" * 32):  # 8 and 128 characters
        response = await signup(client, new_number(), password=password)
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("password", [*COMMON_PASSWORDS, "PassWord123"])
async def test_signup_common_password_is_422(client, app, password):
    number = new_number()
    assert_error(await signup(client, number, password=password), 422, "password_too_common")
    assert await count_users(app) == 0
    response = await signup(client, number, password=PASSWORD)
    assert response.status_code == 201, response.text


# --- login --------------------------------------------------------------------------------


async def test_login_returns_a_token_response(client):
    number = await registered(client)
    created = await client.get("/user/me", headers=bearer(await logged_in(client, number)))
    response = await client.post("/auth/login", json={"phone": number, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "bearer"
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 900
    assert body["refresh_token"]
    assert body["is_new_user"] is False
    assert body["user"] == created.json()
    await assert_tokens_work(client, body)


async def test_login_failures_are_indistinguishable(client):
    with_password = await registered(client)
    without_password = new_number()
    assert (await signup(client, without_password)).status_code == 201
    otp_user = (await sign_in(client))["user"]["mobile_number"]
    failures = [
        await login(client, with_password, NEW_PASSWORD),
        await login(client, new_number(), PASSWORD),
        await login(client, without_password, PASSWORD),
        await login(client, otp_user, PASSWORD),
    ]
    bodies = [assert_invalid_credentials(r) for r in failures]
    assert all(body == bodies[0] for body in bodies)
    # The real password still works after one wrong try.
    assert_token_response(await login(client, with_password, PASSWORD), with_password)


async def _stored_hash(app: Any, number: str) -> str:
    async with app.state.services.database.sessionmaker() as session:
        stored: str = (
            await session.execute(select(User.password_hash).where(User.mobile_number == number))
        ).scalar_one()
    return stored


class TestProductionCost:
    """The suite hashes at a cheap cost (tests/conftest.py); these run at the real one."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        fields = Settings.model_fields
        return {
            name: fields[name].default
            for name in ("password_hash_memory_kib", "password_hash_time_cost")
        }

    async def test_stored_password_hash_is_argon2id(self, client, app):
        number = await registered(client)
        stored = await _stored_hash(app, number)
        assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert PASSWORD not in stored
        assert_token_response(await login(client, number, PASSWORD), number)

    async def test_a_hash_made_at_another_cost_still_verifies(self, client, app):
        # Argon2 writes its parameters into the hash: changing the cost locks no one out.
        cheap = PasswordHasher(1, hasher=Argon2Hasher(time_cost=1, memory_cost=1024))
        number = await registered(client)
        async with app.state.services.database.sessionmaker() as session:
            await session.execute(
                update(User)
                .where(User.mobile_number == number)
                .values(password_hash=await cheap.hash(PASSWORD))
            )
            await session.commit()
        assert "$m=1024,t=1," in await _stored_hash(app, number)
        assert_token_response(await login(client, number, PASSWORD), number)


async def test_concurrent_logins_of_one_user(client):
    # Below the lockout threshold: attempts in flight count until they succeed.
    number = await registered(client)
    responses = await asyncio.gather(*(login(client, number, PASSWORD) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.json()["refresh_token"] for r in responses}) == 8
    assert len({r.json()["access_token"] for r in responses}) == 8


# --- lockout ------------------------------------------------------------------------------


async def fail_logins(client: httpx.AsyncClient, number: str, times: int) -> None:
    for _ in range(times):
        assert_invalid_credentials(await login(client, number, NEW_PASSWORD))


async def test_ten_wrong_passwords_lock_the_number(client, clock):
    number = await registered(client)
    await fail_logins(client, number, 10)
    locked = await login(client, number, PASSWORD)
    assert_error(locked, 429, "too_many_attempts")
    assert locked.headers["Retry-After"] == str(LOCKOUT_SECONDS)
    clock.advance(LOCKOUT_SECONDS - 1)
    still = await login(client, number, PASSWORD)
    assert_error(still, 429, "too_many_attempts")
    assert still.headers["Retry-After"] == "1"
    clock.advance(2)
    assert_token_response(await login(client, number, PASSWORD), number)


async def test_a_success_resets_the_consecutive_count(client):
    number = await registered(client)
    await fail_logins(client, number, 9)
    assert (await login(client, number, PASSWORD)).status_code == 200
    await fail_logins(client, number, 9)
    assert_token_response(await login(client, number, PASSWORD), number)


# --- change-password ----------------------------------------------------------------------


async def test_change_password_requires_auth(client):
    response = await change_password(client, None, new_password=NEW_PASSWORD)
    assert_error(response, 401, "not_authenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    forged = {"access_token": "not-a-jwt"}
    response = await change_password(client, forged, new_password=NEW_PASSWORD)
    assert_error(response, 401, "invalid_token")


async def test_change_password_checks_the_current_one(client):
    number = await registered(client)
    tokens = await logged_in(client, number)
    missing = await change_password(client, tokens, new_password=NEW_PASSWORD)
    assert_error(missing, 422, "current_password_required")
    empty = await change_password(client, tokens, current_password="", new_password=NEW_PASSWORD)
    assert_error(empty, 422, "current_password_required")
    wrong_current = await change_password(
        client, tokens, current_password="not-my-password-7", new_password=NEW_PASSWORD
    )
    assert_invalid_credentials(wrong_current)
    # Nothing changed: the session lives on and the old password still works.
    await assert_tokens_work(client, tokens)
    await assert_password_is(client, number, PASSWORD, NEW_PASSWORD)


async def test_change_password_keeps_this_session_and_ends_the_others(client):
    number = await registered(client)
    this_device = await logged_in(client, number)
    other_device = await logged_in(client, number)
    response = await change_password(
        client, this_device, current_password=PASSWORD, new_password=NEW_PASSWORD
    )
    fresh = assert_token_response(response, number)
    assert fresh["user"]["id"] == this_device["user"]["id"]
    # Clients keep using the token they had (docs/api.md); every other session ends.
    await assert_tokens_work(client, this_device)
    await assert_tokens_refused(client, other_device)
    await assert_tokens_work(client, fresh)
    await assert_password_is(client, number, NEW_PASSWORD, PASSWORD)


@pytest.mark.parametrize(
    ("current_key", "new_key"),
    [
        ("current_password", "new_password"),
        ("old_password", "new_password"),
        ("oldPassword", "newPassword"),
        ("currentPassword", "newPassword"),
    ],
)
async def test_change_password_aliases(client, current_key, new_key):
    number = await registered(client)
    tokens = await logged_in(client, number)
    response = await change_password(
        client, tokens, **{current_key: PASSWORD, new_key: NEW_PASSWORD}
    )
    assert_token_response(response, number)
    await assert_password_is(client, number, NEW_PASSWORD, PASSWORD)


async def test_otp_user_sets_a_first_password_with_a_fresh_otp(client, clock):
    tokens = await sign_in(client)
    number = tokens["user"]["mobile_number"]
    assert tokens["user"]["has_password"] is False
    # An access token alone never sets a first password.
    assert_error(await change_password(client, tokens, new_password=PASSWORD), 422, "otp_required")
    clock.advance(31)
    otp = await request_otp(client, number)
    wrong_code = await change_password(client, tokens, otp=wrong(otp), new_password=PASSWORD)
    assert_invalid_credentials(wrong_code)
    assert (await me(client, tokens)).json()["has_password"] is False
    response = await change_password(client, tokens, otp=otp, new_password=PASSWORD)
    fresh = assert_token_response(response, number)
    await assert_tokens_work(client, tokens)
    assert (await me(client, fresh)).json()["has_password"] is True
    assert_token_response(await login(client, number, PASSWORD), number)
    # From now on the current password is required.
    again = await change_password(client, fresh, new_password=NEW_PASSWORD)
    assert_error(again, 422, "current_password_required")


@pytest.mark.parametrize(
    ("new_password", "code"),
    [
        (COMMON_PASSWORDS[0], "password_too_common"),
        (COMMON_PASSWORDS[1], "password_too_common"),
        ("x" * 7, "validation_error"),
        ("x" * 129, "validation_error"),
    ],
    ids=["common-1", "common-2", "short", "long"],
)
async def test_change_to_a_refused_password_is_422(client, new_password, code):
    number = await registered(client)
    tokens = await logged_in(client, number)
    response = await change_password(
        client, tokens, current_password=PASSWORD, new_password=new_password
    )
    assert_error(response, 422, code)
    await assert_tokens_work(client, tokens)
    await assert_password_is(client, number, PASSWORD, new_password)


# --- forgot-password and reset-password ---------------------------------------------------


async def test_forgot_password_answers_alike_for_unknown_numbers(client):
    known = await forgot(client, await registered(client))
    unknown = await forgot(client, new_number())
    assert known.status_code == unknown.status_code == 200
    known_body, unknown_body = known.json(), unknown.json()
    assert set(known_body) == {"message", "otp", "expires_in"}
    assert len(known_body["otp"]) == 6
    assert known_body["otp"].isdigit()
    assert set(unknown_body) == {"message", "expires_in"}
    assert known_body["message"] == unknown_body["message"]
    assert known_body["message"]
    assert known_body["expires_in"] == unknown_body["expires_in"] == 300


async def test_reset_password_revokes_every_session(client):
    number = await registered(client)
    by_otp = await sign_in(client, number)
    by_password = await logged_in(client, number)
    response = await reset(client, number, await reset_otp(client, number))
    fresh = assert_token_response(response, number)
    await assert_tokens_refused(client, by_otp)
    await assert_tokens_refused(client, by_password)
    await assert_tokens_work(client, fresh)
    await assert_password_is(client, number, NEW_PASSWORD, PASSWORD)


async def test_reset_password_sets_a_first_password(client):
    number = new_number()
    assert (await signup(client, number)).status_code == 201
    response = await client.post(
        "/auth/reset-password",
        json={"phone": number, "code": await reset_otp(client, number), "newPassword": PASSWORD},
    )
    assert_token_response(response, number)
    assert (await login(client, number, PASSWORD)).status_code == 200


async def test_reset_otp_is_single_use(client):
    number = await registered(client)
    otp = await reset_otp(client, number)
    assert (await reset(client, number, otp)).status_code == 200
    assert_invalid_credentials(await reset(client, number, otp, new_password="third-pass-9999"))
    await assert_password_is(client, number, NEW_PASSWORD, "third-pass-9999")


async def test_wrong_reset_otp_is_refused(client):
    number = await registered(client)
    otp = await reset_otp(client, number)
    refused = assert_invalid_credentials(await reset(client, number, wrong(otp)))
    assert refused == (await login(client, number, NEW_PASSWORD)).json()
    # An unknown number answers the same.
    unknown = new_number()
    assert (await forgot(client, unknown)).status_code == 200
    assert assert_invalid_credentials(await reset(client, unknown, otp)) == refused
    await assert_password_is(client, number, PASSWORD, NEW_PASSWORD)
    # A single wrong try does not burn the real code.
    assert_token_response(await reset(client, number, otp), number)


async def test_refused_new_password_does_not_spend_the_reset_otp(client):
    number = await registered(client)
    otp = await reset_otp(client, number)
    assert_error(await reset(client, number, otp, COMMON_PASSWORDS[0]), 422, "password_too_common")
    assert_error(await reset(client, number, otp, "x" * 7), 422, "validation_error")
    assert_token_response(await reset(client, number, otp), number)


async def test_login_and_reset_otps_are_separate(client):
    number = await registered(client)
    login_code = await request_otp(client, number)
    reset_code = await reset_otp(client, number)
    assert_invalid_credentials(await reset(client, number, login_code))
    assert_invalid_credentials(await verify(client, number, reset_code))
    await assert_password_is(client, number, PASSWORD, NEW_PASSWORD)
    # Each code still works for its own purpose.
    assert (await verify(client, number, login_code)).status_code == 200
    assert_token_response(await reset(client, number, reset_code), number)


async def test_reset_otp_expires_after_five_minutes(client, clock):
    number = await registered(client)
    otp = await reset_otp(client, number)
    clock.advance(299)
    assert_token_response(await reset(client, number, otp), number)
    otp = await reset_otp(client, number)
    clock.advance(300)
    assert_invalid_credentials(await reset(client, number, otp, new_password=PASSWORD))
    await assert_password_is(client, number, NEW_PASSWORD, PASSWORD)


async def test_forgot_password_resend_cooldown_is_the_same_for_unknown_numbers(client, clock):
    numbers = [await registered(client), new_number()]
    for number in numbers:
        assert (await forgot(client, number)).status_code == 200
    clock.advance(10)
    too_soon = [await forgot(client, number) for number in numbers]
    bodies = [assert_error(r, 429, "otp_resend_too_soon") for r in too_soon]
    assert bodies[0] == bodies[1]
    assert [r.headers["Retry-After"] for r in too_soon] == ["20", "20"]
    clock.advance(20)
    again = [await forgot(client, number) for number in numbers]
    assert [r.status_code for r in again] == [200, 200]
    assert "otp" in again[0].json()
    assert "otp" not in again[1].json()


async def test_wrong_current_passwords_count_towards_the_lockout(client, clock):
    password = "correct horse battery 1"
    number = await registered(client, password)
    tokens = (await login(client, number, password)).json()
    for _ in range(10):
        response = await change_password(
            client, tokens, current_password="wrong guess 123", new_password="new pass 12345"
        )
        assert response.status_code == 401
    locked = await change_password(
        client, tokens, current_password=password, new_password="new pass 12345"
    )
    assert_error(locked, 429, "too_many_attempts")
    assert (await login(client, number, password)).status_code == 429
    clock.advance(901)
    assert (await login(client, number, password)).status_code == 200
