"""What production serves beyond the API: no interactive docs or OpenAPI document unless
DOCS_ENABLED, and /metrics only for the bearer of METRICS_TOKEN (not at all without one)."""

from __future__ import annotations

import pytest

PRODUCTION = {
    "environment": "production",
    "jwt_secret": "production-test-secret-0123456789",
    "otp_response_in_production": True,
}
METRICS_TOKEN = "metrics-scraper-token-0123456789"


class TestProductionDefaults:
    @pytest.fixture
    def settings_overrides(self):
        return PRODUCTION

    async def test_docs_and_metrics_are_not_served(self, client):
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/metrics"):
            response = await client.get(path)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["code"] == "not_found"
        assert (await client.get("/health")).status_code == 200


class TestProductionWithAMetricsToken:
    @pytest.fixture
    def settings_overrides(self):
        return {**PRODUCTION, "metrics_token": METRICS_TOKEN, "docs_enabled": True}

    async def test_metrics_need_the_token(self, client):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        ):
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["code"] == "not_authenticated"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        response = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert response.status_code == 200
        assert "http_requests_total" in response.text

    async def test_docs_enabled_serves_them_in_production(self, client):
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).json()["paths"]


class TestDevelopment:
    @pytest.fixture
    def settings_overrides(self):
        return {"environment": "development"}

    async def test_docs_and_open_metrics_outside_production(self, client):
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
