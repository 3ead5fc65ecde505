"""The transport and operations settings: documented defaults and refused combinations."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gemini_backend.config import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_match_the_documentation():
    s = settings()
    assert s.trusted_proxy_hops == 0
    assert s.trusted_proxies == []
    assert s.max_header_bytes == 65_536
    assert s.header_read_timeout_seconds == 10.0
    assert s.max_streams_per_user == 20
    assert s.docs_served
    assert s.metrics_served
    production = settings(
        environment="production", jwt_secret="0123456789abcdef" * 2, otp_response_in_production=True
    )
    assert not production.docs_served
    assert not production.metrics_served


def test_trusted_proxies_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7,2001:db8::/32")
    assert settings().trusted_proxies == ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]


@pytest.mark.parametrize(
    "values",
    [
        {"trusted_proxies": ["not-a-network"]},
        {"trusted_proxies": ["10.0.0.0/8"], "trusted_proxy_hops": 1},
        {"trusted_proxy_hops": -1},
        {"max_header_bytes": 1024},
        {"header_read_timeout_seconds": 0},
    ],
)
def test_refused(values):
    with pytest.raises(ValidationError):
        settings(**values)
