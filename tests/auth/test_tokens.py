"""Access tokens (JWT), refresh rotation and reuse, logout, and the 401 contract."""

from __future__ import annotations

import asyncio
import base64
import json

import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import bearer, sign_in

# The tests' clock is not the wall clock; PyJWT would check times against the latter.
UNCHECKED_TIMES = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


async def me(client, token: str | None = None, scheme: str = "Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    return await client.get("/user/me", headers=headers)


def assert_401(response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def refresh(client, refresh_token: str):
    return await client.post("/auth/refresh", json={"refresh_token": refresh_token})


async def test_access_token_claims(client, clock):
    tokens = await sign_in(client)
    assert tokens["token_type"] == "bearer"
    assert tokens["token"] == tokens["access_token"]
    assert tokens["expires_in"] == 900
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(
        tokens["access_token"], JWT_SECRET, algorithms=["HS256"], options=UNCHECKED_TIMES
    )
    assert claims["sub"] == str(tokens["user"]["id"])
    assert claims["typ"] == "access"
    assert claims["iat"] == int(clock.now().timestamp())
    assert claims["exp"] - claims["iat"] == 900
    # The refresh token is opaque, not a JWT.
    assert tokens["refresh_token"].count(".") == 0


async def test_me_requires_a_token(client):
    assert_401(await me(client), "not_authenticated")
    assert_401(await me(client, "abc", scheme="Basic"), "not_authenticated")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "Bearer"])
async def test_malformed_tokens(client, token):
    response = await me(client, token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_tampered_token_is_refused(client):
    tokens = await sign_in(client)
    header, payload, signature = tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = str(int(claims["sub"]) + 1)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_401(await me(client, f"{header}.{forged}.{signature}"), "invalid_token")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    assert_401(await me(client, f"{header}.{payload}.{flipped}"), "invalid_token")


async def test_other_algorithms_and_secrets_are_refused(client, clock):
    tokens = await sign_in(client)
    claims = jwt.decode(
        tokens["access_token"], JWT_SECRET, algorithms=["HS256"], options=UNCHECKED_TIMES
    )
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert_401(await me(client, unsigned), "invalid_token")
    hs512 = jwt.encode(claims, JWT_SECRET + "-long-enough-for-hs512" * 2, algorithm="HS512")
    assert_401(await me(client, hs512), "invalid_token")
    other_key = jwt.encode(claims, "another-secret-of-sufficient-length-000000", algorithm="HS256")
    assert_401(await me(client, other_key), "invalid_token")


async def test_tokens_missing_required_claims_are_refused(client):
    tokens = await sign_in(client)
    claims = jwt.decode(
        tokens["access_token"], JWT_SECRET, algorithms=["HS256"], options=UNCHECKED_TIMES
    )
    for missing in ("exp", "sub", "typ", "iat"):
        partial = {k: v for k, v in claims.items() if k != missing}
        token = jwt.encode(partial, JWT_SECRET, algorithm="HS256")
        assert_401(await me(client, token), "invalid_token")
    wrong_type = jwt.encode({**claims, "typ": "refresh"}, JWT_SECRET, algorithm="HS256")
    assert_401(await me(client, wrong_type), "invalid_token")


async def test_access_token_expires_by_the_clock(client, clock):
    tokens = await sign_in(client)
    clock.advance(899)
    assert (await me(client, tokens["access_token"])).status_code == 200
    clock.advance(1)
    assert_401(await me(client, tokens["access_token"]), "token_expired")
    # The refresh token still works and gives a fresh access token.
    renewed = await refresh(client, tokens["refresh_token"])
    assert renewed.status_code == 200
    assert (await me(client, renewed.json()["access_token"])).status_code == 200


async def test_refresh_rotates_and_spends_the_old_token(client):
    tokens = await sign_in(client)
    first = await refresh(client, tokens["refresh_token"])
    assert first.status_code == 200
    body = first.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["user"]["id"] == tokens["user"]["id"]
    second = await refresh(client, body["refresh_token"])
    assert second.status_code == 200


async def test_reused_refresh_token_is_refused_and_ends_the_session(client, clock):
    tokens = await sign_in(client)
    rotated = (await refresh(client, tokens["refresh_token"])).json()
    clock.advance(6)  # past the reuse grace
    reused = await refresh(client, tokens["refresh_token"])
    assert_401(reused, "invalid_refresh_token")
    # Replay of a spent token means it leaked: the whole session is ended.
    assert_401(await refresh(client, rotated["refresh_token"]), "invalid_refresh_token")
    assert_401(await me(client, rotated["access_token"]), "invalid_token")
    # Other sessions of the same user are untouched.
    other = await sign_in(client, tokens["user"]["mobile_number"])
    assert (await me(client, other["access_token"])).status_code == 200


async def test_unknown_and_expired_refresh_tokens(client, clock):
    assert_401(await refresh(client, "not-a-token"), "invalid_refresh_token")
    tokens = await sign_in(client)
    clock.advance(30 * 24 * 3600)
    assert_401(await refresh(client, tokens["refresh_token"]), "invalid_refresh_token")


async def test_concurrent_refreshes_of_one_token_share_one_successor(client):
    # A client's parallel requests each refresh with the token they hold: within the reuse
    # grace they all get the same new token, and the session lives on (Auth0, Okta).
    tokens = await sign_in(client)
    responses = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1
    (successor,) = successors
    assert successor != tokens["refresh_token"]
    following = await refresh(client, successor)
    assert following.status_code == 200, following.text
    assert (await me(client, following.json()["access_token"])).status_code == 200


async def test_reuse_within_the_grace_after_the_successor_was_used_ends_the_session(client):
    tokens = await sign_in(client)
    successor = (await refresh(client, tokens["refresh_token"])).json()
    assert (await refresh(client, successor["refresh_token"])).status_code == 200
    # The first token again, though its successor is spent: a replay, not a parallel request.
    assert_401(await refresh(client, tokens["refresh_token"]), "invalid_refresh_token")
    assert_401(await me(client, successor["access_token"]), "invalid_token")


async def test_reuse_after_the_grace_ends_the_session(client, clock):
    tokens = await sign_in(client)
    successor = (await refresh(client, tokens["refresh_token"])).json()
    clock.advance(5)
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200  # within 5 s
    clock.advance(1)
    assert_401(await refresh(client, tokens["refresh_token"]), "invalid_refresh_token")
    assert_401(await me(client, successor["access_token"]), "invalid_token")


async def test_logout_ends_the_session(client):
    tokens = await sign_in(client)
    other = await sign_in(client, tokens["user"]["mobile_number"])
    response = await client.post("/auth/logout", headers=bearer(tokens))
    assert response.status_code == 204
    assert response.content == b""
    assert_401(await me(client, tokens["access_token"]), "invalid_token")
    assert_401(await refresh(client, tokens["refresh_token"]), "invalid_refresh_token")
    # Only that session: another device stays signed in.
    assert (await me(client, other["access_token"])).status_code == 200


async def test_logout_with_a_refresh_token_of_another_session_of_mine(client):
    phone = await sign_in(client)
    laptop = await sign_in(client, phone["user"]["mobile_number"])
    response = await client.post(
        "/auth/logout", headers=bearer(phone), json={"refresh_token": laptop["refresh_token"]}
    )
    assert response.status_code == 204
    assert_401(await refresh(client, laptop["refresh_token"]), "invalid_refresh_token")


async def test_logout_cannot_end_someone_elses_session(client):
    mine = await sign_in(client)
    theirs = await sign_in(client)
    response = await client.post(
        "/auth/logout", headers=bearer(mine), json={"refresh_token": theirs["refresh_token"]}
    )
    assert response.status_code == 204
    assert (await refresh(client, theirs["refresh_token"])).status_code == 200


async def test_logout_requires_auth(client):
    assert_401(await client.post("/auth/logout"), "not_authenticated")


async def test_token_from_a_deleted_user_is_refused(client, app):
    from sqlalchemy import delete

    from gemini_backend.users.models import User

    tokens = await sign_in(client)
    async with app.state.services.database.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == tokens["user"]["id"]))
        await session.commit()
    assert_401(await me(client, tokens["access_token"]), "invalid_token")


async def test_me_shape(client):
    tokens = await sign_in(client)
    body = (await me(client, tokens["access_token"])).json()
    assert set(body) == {
        "id",
        "mobile_number",
        "name",
        "email",
        "tier",
        "has_password",
        "created_at",
    }
    assert body["created_at"].endswith(("Z", "+00:00"))
