"""Access tokens signed with the service's real key but holding ids or times no token of ours
holds: 401 `invalid_token` on every way a token is read (a route's dependency, the cached-read
fast path), never a 500."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import sign_in

HUGE = 99999999999999999999999


def _forged(tokens: dict[str, Any], **changes: Any) -> str:
    claims = jwt.decode(
        tokens["access_token"], JWT_SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    claims.update(changes)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": str(HUGE)},
        {"sub": "0"},
        {"sub": "-5"},
        {"sid": HUGE},
        {"sid": 2**63},
        {"sid": -1},
        {"exp": 1e20},
        {"exp": 10**30},
        {"exp": -1},
        {"iat": -(10**12)},
        {"iat": 10**25},
        {"iat": 1e300},
    ],
    ids=lambda changes: ",".join(f"{k}={v}"[:24] for k, v in changes.items()),
)
async def test_out_of_range_claims_are_an_invalid_token(client, changes):
    tokens = await sign_in(client)
    token = _forged(tokens, **changes)
    for path in ("/user/me", "/chatroom", "/chatroom/1", "/subscription/status"):
        response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (path, response.text)
        assert response.json()["code"] == "invalid_token", path


async def test_an_infinite_expiry_is_an_invalid_token(client):
    tokens = await sign_in(client)
    header, _, _ = tokens["access_token"].partition(".")
    # JSON that Python's parser reads as float infinity, signed with the real key.
    payload = jwt.utils.base64url_encode(
        b'{"sub":"1","sid":1,"typ":"access","iat":1,"exp":Infinity}'
    ).decode()
    signing_input = f"{header}.{payload}".encode()
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        signing_input, JWT_SECRET.encode()
    )
    token = f"{header}.{payload}.{jwt.utils.base64url_encode(signature).decode()}"
    response = await client.get("/user/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"
