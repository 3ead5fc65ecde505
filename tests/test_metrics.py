"""GET /metrics: the families operators need, moving with what the service does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.billing.stripe_events import Customer, post_event
from tests.helpers import bearer, read_sse, sign_in


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_follow_requests_replies_quota_webhooks_and_cache(client, clock):
    before = await scrape(client)
    tokens = await sign_in(client)
    auth = bearer(tokens)
    assert (await client.get("/user/me", headers=auth)).status_code == 200
    assert (await client.get("/user/me/", headers=auth)).status_code == 200
    assert (await client.get("/no/such/route")).status_code == 404

    room = (await client.post("/chatroom", json={"name": "m"}, headers=auth)).json()["id"]
    for _ in range(2):
        await client.get("/chatroom", headers=auth)  # a miss, then a hit
    receipts = []
    for i in range(6):
        response = await client.post(
            f"/chatroom/{room}/message", json={"content": f"m{i}"}, headers=auth
        )
        receipts.append(response)
    assert [r.status_code for r in receipts] == [202] * 5 + [429]
    for receipt in receipts[:5]:
        events = await read_sse(client, receipt.json()["stream_url"], auth)
        assert events[-1][1] == "done"

    now = int(clock.now().timestamp())
    customer = Customer(tokens["user"]["id"])
    assert (await post_event(client, customer.checkout_completed("sub_m", now), now)).is_success
    assert (await post_event(client, "{}", now, secret="whsec_wrong")).status_code == 400

    after = await scrape(client)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("http_requests_total", 2, method="GET", route="/user/me", status="200")
    assert grew("http_requests_total", method="GET", route="unmatched", status="404")
    assert grew("http_request_duration_seconds_count", 2, method="GET", route="/user/me")
    assert grew("replies_total", 5, outcome="completed", error="")
    assert grew("ai_time_to_first_token_seconds_count", 5, provider="demo")
    assert grew("ai_provider_duration_seconds_count", 5, provider="demo")
    assert grew("ai_provider_attempts_total", 5, provider="demo")
    assert grew("reply_job_lag_seconds_count", 5)
    assert grew("quota_rejections_total", limit="daily_limit")
    assert grew("stripe_webhook_events_total", type="checkout.session.completed", result="applied")
    assert grew("stripe_webhook_events_total", type="unknown", result="invalid_signature")
    assert grew("cache_requests_total", cache="chatroom_list", result="miss")
    assert grew("cache_requests_total", cache="chatroom_list", result="hit")
    assert value(after, "reply_queue_depth") == 0
    assert value(after, "reply_queue_oldest_age_seconds") == 0


async def test_responses_carry_the_security_headers_and_a_request_id(client):
    response = await client.get("/health")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain http here
    assert len(response.headers["X-Request-ID"]) == 32
    error = await client.get("/user/me")
    assert error.status_code == 401
    assert error.headers["X-Content-Type-Options"] == "nosniff"
    assert error.headers["X-Request-ID"]
