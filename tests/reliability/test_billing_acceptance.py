"""The subscription acceptance run against real `gemini-backend` processes: 20 concurrent sends
from one Basic user -> 5 x 202 + 15 x 429; checkout through the mock page -> Pro -> a sixth
message accepted; forged, unsigned, stale and replayed webhooks; cancel -> Basic with the day's
usage still counted. Production mode: two API processes and a worker on PostgreSQL + Redis, the
checkout started on one process, paid on the other, the events delivered to the first."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from tests.billing.pages import form_actions
from tests.billing.stripe_events import Customer, post_event, signature
from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import ServiceProcess, free_port, service_env

SENDS = 20


def test_quota_checkout_webhooks_cancel(storage: Storage, database_url: str, tmp_path: Path):
    ports = [free_port(), free_port()] if BACKEND == "production" else [free_port()]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    env = service_env(
        BACKEND,
        database_url=database_url,
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        JWT_SECRET="b" * 40,
        PUBLIC_BASE_URL=bases[0],
        DEMO_CHUNK_DELAY_MS="0",
    )
    # Embedded: the one process migrates its fresh SQLite file at start-up.
    migrate = ["--no-migrate"] if BACKEND == "production" else []
    processes = [
        ServiceProcess(
            ["serve", "--port", str(port), *migrate], env, tmp_path, tmp_path / f"api{i}.log"
        )
        for i, port in enumerate(ports)
    ]
    if BACKEND == "production":
        processes.append(ServiceProcess(["worker"], env, tmp_path, tmp_path / "worker.log"))
    try:
        for process, base in zip(processes, bases, strict=False):
            process.wait_healthy(base)
        asyncio.run(_run(bases))
    finally:
        for process in processes:
            process.kill()


async def _run(bases: list[str]) -> None:
    clients = [httpx.AsyncClient(base_url=base, timeout=30.0, trust_env=False) for base in bases]
    first, last = clients[0], clients[-1]
    try:
        number = new_number()
        sent = await first.post("/auth/send-otp", json={"mobile_number": number})
        assert sent.status_code == 200, sent.text
        otp = sent.json()["otp"]
        tokens = (
            await first.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp})
        ).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        user_id = tokens["user"]["id"]
        room = (await last.post("/chatroom", json={}, headers=auth)).json()["id"]

        async def send(client: httpx.AsyncClient, text: str) -> httpx.Response:
            return await client.post(
                f"/chatroom/{room}/message", json={"content": text}, headers=auth
            )

        responses = await asyncio.gather(
            *(send(clients[i % len(clients)], f"m{i}") for i in range(SENDS))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [202] * 5 + [429] * (SENDS - 5)

        # Checkout on the last process; its page and Pay button served by the last process too.
        started = await last.post("/subscribe/pro", headers=auth)
        assert started.status_code == 201, started.text
        checkout_url = httpx.URL(started.json()["checkout_url"])
        page = await last.get(checkout_url.raw_path.decode())
        assert page.status_code == 200
        pay_action = form_actions(page.text)["Pay"]  # a browser's Pay: no Authorization
        paid = await last.post(pay_action)
        assert paid.status_code == 303, paid.text
        status = (await first.get("/subscription/status", headers=auth)).json()
        assert (status["tier"], status["status"]) == ("pro", "active")
        sixth = await send(first, "the sixth")
        assert sixth.status_code == 202, sixth.text

        # Forged, unsigned, stale and replayed webhooks.
        now = int(time.time())
        customer = Customer(user_id)
        forged = customer.subscription("deleted", status["subscription_id"], "canceled", now, now)
        response = await post_event(first, forged, now, secret="whsec_forged")
        assert response.status_code == 400
        payload = json.dumps(forged)
        unsigned = await first.post("/webhook/stripe", content=payload)
        assert unsigned.status_code == 400
        stale = await first.post(
            "/webhook/stripe",
            content=payload,
            headers={"Stripe-Signature": signature(payload, now - 3600)},
        )
        assert stale.status_code == 400
        assert (await first.get("/subscription/status", headers=auth)).json()["tier"] == "pro"
        harmless = customer.invoice("paid", status["subscription_id"], now, now)
        assert (await post_event(first, harmless, now)).json()["outcome"] in {"applied", "stale"}
        replayed = await post_event(last, harmless, now)
        assert replayed.status_code == 200
        assert replayed.json()["outcome"] == "duplicate"

        # Cancel through the mock: Basic again, today's six messages still count.
        cancelled = await last.post(
            f"/mock-stripe/subscriptions/{status['subscription_id']}/cancel", headers=auth
        )
        assert cancelled.status_code == 200, cancelled.text
        status = (await last.get("/subscription/status", headers=auth)).json()
        assert (status["tier"], status["status"]) == ("basic", "canceled")
        assert (status["used_today"], status["remaining_today"]) == (6, 0)
        refused = await send(last, "one too many")
        assert refused.status_code == 429
        assert refused.json()["code"] == "daily_limit_reached"
    finally:
        for client in clients:
            await client.aclose()
