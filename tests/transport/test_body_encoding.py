"""A JSON body that is not valid UTF-8 is malformed JSON (400 `malformed_json`), like any other
undecodable body, on every route that takes one, and changes nothing."""

from __future__ import annotations

import pytest

from tests.helpers import bearer, sign_in

BODIES = [
    b'{"mobile_number": "\xff\xfe98765"}',
    b"\xc3\x28",
    b'{"mobile_number": "98765\x80", "name": "r"}',  # a lone continuation byte
]


@pytest.mark.parametrize("body", BODIES)
async def test_invalid_utf8_is_malformed_json(client, body):
    headers = {"content-type": "application/json"}
    response = await client.post("/auth/send-otp", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "detail": "The request body is not valid JSON.",
        "code": "malformed_json",
    }
    auth = bearer(await sign_in(client))
    response = await client.post("/chatroom", content=body, headers={**headers, **auth})
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"
    assert (await client.get("/chatroom", headers=auth)).json()["chatrooms"] == []
