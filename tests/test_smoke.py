from tests.helpers import bearer, sign_in


async def test_sign_in_and_read_me(client):
    tokens = await sign_in(client)
    response = await client.get("/user/me", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert response.json()["tier"] == "basic"
