"""Settings: documented defaults, production rules, OTP test numbers, the embedded JWT secret and
the mode that follows from the storage URLs."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import ValidationError

from gemini_backend.config import DEV_WEBHOOK_SECRET, Environment, Settings

STRONG_SECRET = "0123456789abcdef" * 2  # 32 bytes, 16 distinct characters


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the developer's shell or CI may leak into these settings."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # A relative DATA_DIR (the default) must never land in the repository.
    monkeypatch.chdir(tmp_path)


def settings(**values: Any) -> Settings:
    production = "production" in (values.get("environment"), os.environ.get("ENVIRONMENT"))
    if production and "OTP_RESPONSE_IN_PRODUCTION" not in os.environ:
        # Production refuses codes in responses unless said on purpose (tests/auth/
        # test_delivery.py): these tests are about the other rules.
        values.setdefault("otp_response_in_production", True)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- defaults ------------------------------------------------------------------------------


def test_defaults_match_the_documentation():
    s = settings()
    assert s.environment is Environment.DEVELOPMENT
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.max_body_bytes == 1_048_576
    assert s.access_token_ttl_seconds == 900
    assert s.otp_ttl_seconds == 300
    assert s.otp_resend_seconds == 30
    assert s.otp_max_attempts == 5
    assert s.otp_lockout_threshold == 10
    assert s.otp_lockout_seconds == 900
    assert s.default_phone_region == "IN"
    assert s.otp_delivery == "response"
    assert s.otp_test_numbers == {}
    assert s.chatroom_cache_ttl == 300
    assert s.max_message_chars == 8000
    assert s.basic_daily_limit == 5
    assert s.send_per_minute == 20
    assert s.reply_stale_seconds == 60
    assert s.ai_max_attempts == 4
    assert s.gemini_model == "gemini-2.5-flash"
    assert s.database_url is None
    assert s.redis_url is None
    assert s.jwt_secret is None
    assert s.base_url == "http://127.0.0.1:8000"
    assert s.stripe_secret_key is None
    assert s.stripe_mock_enabled
    assert s.stripe_pro_price_id == "price_pro_monthly"
    assert s.past_due_grace_days == 3
    # The web client (WEB_CLIENT_ENABLED, on by default) is where Checkout and the portal return.
    assert s.web_client_enabled
    assert s.success_url == "http://127.0.0.1:8000/?checkout=success"
    assert s.cancel_url == "http://127.0.0.1:8000/?checkout=cancelled"
    assert s.portal_return_target == "http://127.0.0.1:8000/?billing=return"


def test_password_hash_cost_defaults_to_pwdlibs():
    s = settings()
    hasher = Argon2Hasher()._hasher
    assert s.password_hash_memory_kib == hasher.memory_cost == 65536
    assert s.password_hash_time_cost == hasher.time_cost == 3


def test_billing_urls_follow_the_public_base_url():
    s = settings(public_base_url="https://chat.example.com/")
    assert s.success_url == "https://chat.example.com/?checkout=success"
    s = settings(checkout_success_url="https://app.example.com/paid")
    assert s.success_url == "https://app.example.com/paid"


def test_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("ACCESS_TOKEN_TTL_SECONDS", "600")
    monkeypatch.setenv("DEFAULT_PHONE_REGION", "US")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    s = settings()
    assert s.port == 9123
    assert s.access_token_ttl_seconds == 600
    assert s.default_phone_region == "US"
    assert s.cors_origins == ["https://a.example", "https://b.example"]


# --- production rules ----------------------------------------------------------------------


def test_production_requires_a_jwt_secret():
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        settings(environment="production")


def test_production_refuses_a_short_jwt_secret(monkeypatch):
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        settings(environment="production", jwt_secret="s" * 31)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", "s" * 31)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        settings()


def test_production_accepts_a_32_byte_jwt_secret(monkeypatch):
    s = settings(environment="production", jwt_secret=STRONG_SECRET)
    assert s.environment is Environment.PRODUCTION
    assert s.jwt_secret_value() == STRONG_SECRET
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    assert settings().jwt_secret_value() == STRONG_SECRET


@pytest.mark.parametrize("secret", ["s" * 64, "ab" * 32, "0123456" * 8])
def test_production_refuses_a_jwt_secret_of_few_characters(secret):
    with pytest.raises(ValidationError, match="distinct characters"):
        settings(environment="production", jwt_secret=secret)


def test_production_accepts_eight_distinct_characters():
    assert settings(environment="production", jwt_secret="01234567" * 4).jwt_secret is not None


@pytest.mark.parametrize("origins", ["null", "https://app.example.com,NULL"])
def test_production_refuses_the_null_cors_origin(origins, monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", origins)
    with pytest.raises(ValidationError, match="'null'"):
        settings(environment="production", jwt_secret=STRONG_SECRET)
    assert "null" in [o.lower() for o in settings(environment="development").cors_origins]


def test_secret_length_is_counted_in_bytes():
    # 24 characters but 32 bytes of UTF-8.
    secret = "àéîõü" + "é" * 3 + "abcdefghijklmnop"
    assert len(secret) < 32
    assert len(secret.encode()) == 32
    assert settings(environment="production", jwt_secret=secret).jwt_secret_value() == secret


def test_production_refuses_otp_test_numbers(monkeypatch):
    with pytest.raises(ValidationError, match="OTP_TEST_NUMBERS"):
        settings(
            environment="production",
            jwt_secret=STRONG_SECRET,
            otp_test_numbers={"+15555550100": "123456"},
        )
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("OTP_TEST_NUMBERS", "+15555550100:123456")
    with pytest.raises(ValidationError, match="OTP_TEST_NUMBERS"):
        settings()


@pytest.mark.parametrize(
    ("memory_kib", "time_cost"), [(19455, 2), (19456, 1), (1024, 1)], ids=["memory", "time", "test"]
)
def test_production_refuses_a_cheap_password_hash(monkeypatch, memory_kib, time_cost):
    # The test suite's cheap Argon2 parameters can never reach a deployment.
    with pytest.raises(ValidationError, match="PASSWORD_HASH_MEMORY_KIB"):
        settings(
            environment="production",
            jwt_secret=STRONG_SECRET,
            password_hash_memory_kib=memory_kib,
            password_hash_time_cost=time_cost,
        )
    assert settings(password_hash_memory_kib=memory_kib, password_hash_time_cost=time_cost)
    s = settings(
        environment="production",
        jwt_secret=STRONG_SECRET,
        password_hash_memory_kib=19456,
        password_hash_time_cost=2,
    )
    assert (s.password_hash_memory_kib, s.password_hash_time_cost) == (19456, 2)


REAL_WEBHOOK_SECRET = "whsec_" + "a1B2c3D4" * 4


def test_production_refuses_the_public_webhook_secret_with_a_stripe_key():
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET"):
        settings(environment="production", jwt_secret=STRONG_SECRET, stripe_secret_key="sk_live_x")
    s = settings(
        environment="production",
        jwt_secret=STRONG_SECRET,
        stripe_secret_key="sk_live_x",
        stripe_webhook_secret=REAL_WEBHOOK_SECRET,
    )
    assert not s.stripe_mock_enabled


@pytest.mark.parametrize("stripe_key", [None, "sk_live_x"])
@pytest.mark.parametrize(
    "secret",
    [DEV_WEBHOOK_SECRET, "x", "whsec_", "whsec_short", "a" * 40, "whsec_" + "a" * 23],
)
def test_production_refuses_the_public_or_a_weak_webhook_secret(monkeypatch, stripe_key, secret):
    # Set explicitly, the public default or a placeholder is refused with or without a key.
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET"):
        settings(
            environment="production",
            jwt_secret=STRONG_SECRET,
            stripe_secret_key=stripe_key,
            stripe_webhook_secret=secret,
        )
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", secret)
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET"):
        settings()


def test_production_accepts_a_real_webhook_secret_with_or_without_a_key():
    for key in (None, "sk_live_x"):
        s = settings(
            environment="production",
            jwt_secret=STRONG_SECRET,
            stripe_secret_key=key,
            stripe_webhook_secret=REAL_WEBHOOK_SECRET,
        )
        assert s.stripe_webhook_secret.get_secret_value() == REAL_WEBHOOK_SECRET


def test_production_starts_with_nothing_stripe_related_set(monkeypatch):
    # What compose.yaml and render.yaml pass when no Stripe values are filled in: empty or no
    # variables. The service starts, with payments off (the webhook is 503, see tests/billing).
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    monkeypatch.setenv("STRIPE_PRO_PRICE_ID", "")
    s = settings()
    assert s.stripe_secret_key is None
    assert not s.stripe_mock_enabled
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    assert settings().stripe_secret_key is None


def test_development_keeps_the_public_webhook_secret():
    assert settings().stripe_webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET
    s = settings(environment="development", stripe_webhook_secret="x")
    assert s.stripe_webhook_secret.get_secret_value() == "x"


def test_the_stripe_mock_is_never_on_in_production():
    assert not settings(environment="production", jwt_secret=STRONG_SECRET).stripe_mock_enabled
    assert not settings(stripe_secret_key="sk_test_x").stripe_mock_enabled


def test_development_needs_no_jwt_secret():
    assert settings(environment="development").jwt_secret is None
    assert settings(environment="test").jwt_secret is None


# --- OTP test numbers ----------------------------------------------------------------------


def test_otp_test_numbers_from_the_environment(monkeypatch):
    monkeypatch.setenv("OTP_TEST_NUMBERS", "+15555550100:123456,+15555550101:654321")
    assert settings().otp_test_numbers == {
        "+15555550100": "123456",
        "+15555550101": "654321",
    }


def test_otp_test_numbers_tolerate_spaces_and_empty_items(monkeypatch):
    monkeypatch.setenv("OTP_TEST_NUMBERS", " +15555550100 : 123456 , ,+15555550101:654321,")
    assert settings().otp_test_numbers == {
        "+15555550100": "123456",
        "+15555550101": "654321",
    }


def test_otp_test_numbers_empty_string_is_empty(monkeypatch):
    monkeypatch.setenv("OTP_TEST_NUMBERS", "")
    assert settings().otp_test_numbers == {}


@pytest.mark.parametrize(
    "value",
    [
        "+15555550100",  # no code
        "+15555550100:12345",  # 5 digits
        "+15555550100:1234567",  # 7 digits
        "+15555550100:12345a",  # not digits
        "+15555550100:123456,+15555550101",  # one good, one bad
        "+15555550100;123456",  # wrong separator
    ],
)
def test_malformed_otp_test_numbers_are_refused(monkeypatch, value):
    monkeypatch.setenv("OTP_TEST_NUMBERS", value)
    with pytest.raises(ValidationError, match="OTP_TEST_NUMBERS"):
        settings()


# --- the embedded JWT secret ---------------------------------------------------------------


def test_embedded_jwt_secret_is_generated_and_kept(tmp_path):
    data_dir = tmp_path / "data"
    first = settings(data_dir=data_dir).jwt_secret_value()
    path = data_dir / "jwt_secret"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.encode()) >= 32
    assert path.read_text().strip() == first
    # Another Settings (another process start) reads the same key.
    assert settings(data_dir=data_dir).jwt_secret_value() == first
    # No temporary file is left behind.
    assert sorted(p.name for p in data_dir.iterdir()) == ["jwt_secret"]


def test_embedded_jwt_secret_is_distinct_per_data_dir(tmp_path):
    one = settings(data_dir=tmp_path / "one").jwt_secret_value()
    two = settings(data_dir=tmp_path / "two").jwt_secret_value()
    assert one != two


@pytest.mark.parametrize("stored", ["too-short\n", "", "\n"])
def test_a_short_stored_jwt_secret_is_never_used(tmp_path, stored):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "jwt_secret").write_text(stored)
    try:
        value = settings(data_dir=data_dir).jwt_secret_value()
    except (ValueError, RuntimeError, OSError):
        return  # refusing to start is as good as replacing it
    assert len(value.encode()) >= 32
    assert settings(data_dir=data_dir).jwt_secret_value() == value


def test_an_explicit_jwt_secret_writes_no_file(tmp_path):
    data_dir = tmp_path / "data"
    assert settings(data_dir=data_dir, jwt_secret=STRONG_SECRET).jwt_secret_value() == STRONG_SECRET
    assert not (data_dir / "jwt_secret").exists()


def test_otp_key_differs_from_the_jwt_key(tmp_path):
    s = settings(data_dir=tmp_path / "data")
    assert s.otp_secret_value() != s.jwt_secret_value().encode()
    assert settings(data_dir=tmp_path / "data").otp_secret_value() == s.otp_secret_value()


THREADS = 8
ROUNDS = 50


def _race_for_secret(data_dir: Path) -> list[str | BaseException]:
    barrier = threading.Barrier(THREADS)

    def create() -> str | BaseException:
        instance = settings(data_dir=data_dir)
        barrier.wait(timeout=10)
        try:
            return instance.jwt_secret_value()
        except Exception as exc:  # reported by the assertion below
            return exc

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda _: create(), range(THREADS)))


def test_embedded_jwt_secret_concurrent_creation_yields_one_value(tmp_path):
    for round_ in range(ROUNDS):
        data_dir = tmp_path / f"round{round_}"
        results = _race_for_secret(data_dir)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"round {round_}: {errors!r}"
        stored = (data_dir / "jwt_secret").read_text().strip()
        assert set(results) == {stored}, f"round {round_}: {len(set(results))} values"
        assert len(stored.encode()) >= 32
        assert stat.S_IMODE((data_dir / "jwt_secret").stat().st_mode) == 0o600
        assert [p.name for p in data_dir.iterdir()] == ["jwt_secret"], "temporary files left"


# --- mode ----------------------------------------------------------------------------------


def test_sqlite_is_the_embedded_default(tmp_path):
    s = settings(data_dir=tmp_path / "data")
    expected = (tmp_path / "data" / "gemini_backend.db").as_posix()
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{expected}"
    assert not s.is_postgres
    assert not s.is_production_mode


def test_sqlite_with_redis_is_still_embedded():
    s = settings(database_url="sqlite+aiosqlite:///x.db", redis_url="redis://127.0.0.1:6379/0")
    assert not s.is_production_mode


def test_postgres_without_redis_is_not_production_mode():
    s = settings(database_url="postgresql+asyncpg://u:p@db:5432/app")
    assert s.is_postgres
    assert not s.is_production_mode


def test_postgres_with_redis_is_production_mode():
    s = settings(
        database_url="postgresql+asyncpg://u:p@db:5432/app", redis_url="redis://cache:6379/0"
    )
    assert s.is_postgres
    assert s.is_production_mode


def test_mode_from_environment_variables(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    s = settings()
    assert s.resolved_database_url == "postgresql+asyncpg://u:p@db:5432/app"
    assert s.is_production_mode


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgres://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgresql://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgresql+asyncpg://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        (
            "postgres://u:p@db:5432/app?sslmode=require",
            "postgresql+asyncpg://u:p@db:5432/app?sslmode=require",
        ),
        ("sqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
        ("sqlite+aiosqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
    ],
)
def test_database_urls_are_rewritten_to_async_drivers(given, resolved):
    assert settings(database_url=given).resolved_database_url == resolved
