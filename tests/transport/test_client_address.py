"""The client address the per-address limits count: X-Forwarded-For is believed only as far as
the configured proxies vouch for it (the right-most untrusted hop), through the real server
process and through the application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import free_port, running_service, service_env

pytestmark = pytest.mark.slow  # real `gemini-backend` processes

ROOT = Path(__file__).resolve().parents[2]


def _render_proxy_env() -> dict[str, str]:
    """The proxy settings render.yaml gives the API service (the deployment under test)."""
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    web = next(s for s in blueprint["services"] if s["type"] == "web")
    names = {"TRUSTED_PROXY_HOPS", "TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS"}
    return {v["key"]: str(v["value"]) for v in web["envVars"] if v["key"] in names and "value" in v}


@pytest.fixture
def serve(storage: Storage, database_url: str, tmp_path: Path) -> Any:
    def start(**values: str) -> Any:
        port = free_port()
        env = service_env(
            BACKEND,
            database_url=database_url,
            redis_url=storage.redis_url,
            tmp_path=tmp_path,
            JWT_SECRET="x" * 40,
            OTP_SENDS_PER_IP_PER_HOUR="2",
            OTP_RESEND_SECONDS="0",
            LOG_LEVEL="WARNING",
            **values,
        )
        return running_service(BACKEND, env, tmp_path, port), f"http://127.0.0.1:{port}"

    return start


def _sends(base: str, forwarded_for: list[str]) -> list[int]:
    with httpx.Client(base_url=base, timeout=15.0) as client:
        return [
            client.post(
                "/auth/send-otp",
                json={"mobile_number": new_number()},
                headers={"X-Forwarded-For": value},
            ).status_code
            for value in forwarded_for
        ]


def test_a_forged_forwarded_for_is_ignored_by_default(serve):
    service, base = serve()
    with service:
        forged = [f"203.0.113.{i}" for i in range(1, 5)]
        assert _sends(base, forged) == [200, 200, 429, 429]


def test_render_blueprint_counts_the_client_its_proxies_saw(serve):
    """render.yaml's settings behind Render's two hops (`<client>, <Cloudflare edge>`): what the
    client writes in front changes nothing; another client has its own budget."""
    env = _render_proxy_env()
    assert "FORWARDED_ALLOW_IPS" not in env
    service, base = serve(**env)
    edge = "104.22.17.40"
    with service:
        same_client = [f"198.18.0.{i}, 203.0.113.5, {edge}" for i in range(1, 5)]
        assert _sends(base, same_client) == [200, 200, 429, 429]
        assert _sends(base, [f"203.0.113.5, 203.0.113.6, {edge}"]) == [200]


class TestBehindProxies:
    """TRUSTED_PROXIES: the client's peer (198.51.100.7, see conftest) is a trusted proxy."""

    @pytest.fixture
    def settings_overrides(self):
        return {
            "trusted_proxies": ["198.51.100.0/24", "10.0.0.0/8"],
            "otp_sends_per_ip_per_hour": 1,
            "otp_resend_seconds": 0,
        }

    async def _send(self, client, forwarded_for: str | None = None) -> int:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
        response = await client.post(
            "/auth/send-otp", json={"mobile_number": new_number()}, headers=headers
        )
        return response.status_code

    async def test_right_most_untrusted_hop(self, client):
        assert await self._send(client, "1.1.1.1, 203.0.113.9, 10.1.2.3") == 200
        # A different forged left part, the same client behind the same proxies.
        assert await self._send(client, "8.8.8.8, 203.0.113.9") == 429
        assert await self._send(client, "203.0.113.10, 10.9.9.9") == 200

    async def test_the_header_is_bounded(self, client):
        many = ", ".join(["192.0.2.1"] * 5000) + ", 203.0.113.20"
        assert await self._send(client, many) == 200
        assert await self._send(client, "203.0.113.20") == 429
        # Garbage instead of an address: counted as the proxy that sent it, never a 500.
        assert await self._send(client, "not-an-address") == 200
        assert await self._send(client, "1.2.3.4, also-not") == 429

    async def test_a_client_that_is_not_a_proxy_is_its_own_address(self, app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.77", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as direct:
            assert await self._send(direct, "203.0.113.30") == 200
            assert await self._send(direct, "203.0.113.31") == 429
