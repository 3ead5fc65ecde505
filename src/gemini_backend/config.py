"""All configuration, read from the environment (and an optional `.env` file).

The mode follows from the settings: PostgreSQL + `REDIS_URL` is production mode (Redis broker,
cache and throttles, separate workers); anything else runs embedded (SQLite file, in-process queue,
cache and throttles).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32
# A production JWT_SECRET needs this many different characters: a random value has far more
# (32 hex digits: 14 on average, 9 the fewest in 100,000 draws; base64: at least 24); a typed
# placeholder ("x" * 40, "abab...") has one or two.
MIN_SECRET_DISTINCT_CHARS = 8
# The signing secret the built-in Stripe mock and the Postman environment use by default.
DEV_WEBHOOK_SECRET = "whsec_dev_insecure_local_mock_secret"  # noqa: S105 (public on purpose)
# A Stripe endpoint secret is `whsec_` and 32 or more random characters; production wants that
# shape (with some slack), so a placeholder such as `x` cannot stand in for one.
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_WEBHOOK_SECRET_CHARS = 24
# OWASP's least Argon2id cost (19 MiB, 2 passes): cheaper parameters exist for the test suite
# and are refused in production. The defaults are pwdlib's (64 MiB, 3 passes).
MIN_PRODUCTION_HASH_MEMORY_KIB = 19456
MIN_PRODUCTION_HASH_TIME_COST = 2


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # `STRIPE_SECRET_KEY=` (empty, as compose and hosting dashboards pass unset values)
        # means unset, not an empty key.
        env_ignore_empty=True,
    )

    # --- process -------------------------------------------------------------------------
    environment: Environment = Environment.DEVELOPMENT
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # How long an idle client connection is kept open. Longer than the idle timeout of the load
    # balancer or proxy in front (60 s for AWS ALB and nginx), so that it never reuses a
    # connection the server is closing at that moment (a 502, or a client's read error).
    keep_alive_seconds: int = Field(default=75, ge=1)
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_base_url: str | None = None
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # FastAPI's native OpenTelemetry (request spans, metrics and logs, sent to the providers an
    # OpenTelemetry SDK or agent installs). Off: without one, FastAPI only looks the providers
    # up again on every request (a few percent of a request's CPU in a profile).
    opentelemetry: bool = False
    # The reverse proxies in front (core/client_address.py): how many append to X-Forwarded-For
    # (Render: 2), or their networks. Neither: X-Forwarded-For is ignored.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=8)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The server's own bounds on a request's head, whatever sits in front: larger is 431, slower
    # (from the connection, or the request's first byte, to the end of its headers) is closed.
    max_header_bytes: int = Field(default=65_536, ge=4096)
    header_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # Open reply streams of one user in one API process; more is 429 `too_many_streams`.
    max_streams_per_user: int = Field(default=20, ge=1)
    # /docs, /redoc and /openapi.json; default: on, except in production.
    docs_enabled: bool | None = None
    # A bearer token /metrics requires when set (in production /metrics is off without one).
    metrics_token: SecretStr | None = None
    # The first-party web client at `/` (docs/web-client.md); off leaves a pure JSON API.
    web_client_enabled: bool = True

    # --- storage -------------------------------------------------------------------------
    database_url: str | None = None
    # A fixed pool: overflow connections are opened and closed again under load (connection
    # setup showed in the profile of the message send), so the default keeps 20 open instead.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # PostgreSQL: a statement (or a connection attempt) without an answer for this long fails
    # (503) instead of hanging the request when the database stops answering.
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    redis_url: str | None = None
    redis_key_prefix: str = "gb"
    # Connections per process: requests wait for one (up to REDIS_POOL_TIMEOUT_SECONDS, then 503)
    # rather than fail. Open SSE streams share one connection, whatever their number.
    redis_max_connections: int = Field(default=64, ge=2)
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # A Redis command (and the queue's) that gets no answer for this long fails (503), so a
    # Redis that stops answering without closing connections never hangs a request.
    redis_socket_timeout_seconds: float = Field(default=10.0, ge=2)

    # --- auth ----------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    otp_secret: SecretStr | None = None
    access_token_ttl_seconds: int = Field(default=900, ge=30)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    default_phone_region: str = "IN"
    # `response` returns the code in the body (the brief's local/demo mode); `log` writes it to
    # the log (development); `twilio` sends it by SMS through Twilio's Messaging API.
    otp_delivery: Literal["response", "log", "twilio"] = "response"
    # A production deployment that returns codes in responses lets anyone sign in as anyone:
    # allowed only when said on purpose (a public demo).
    otp_response_in_production: bool = False
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    # Another endpoint for Twilio's REST API (a regional edge, or the tests' local fake server).
    twilio_api_base_url: str | None = None
    otp_delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    otp_ttl_seconds: int = Field(default=300, ge=30)
    otp_resend_seconds: int = Field(default=30, ge=0)
    otp_max_attempts: int = Field(default=5, ge=1)
    # Consecutive failed sign-ins that lock a number for one client address, and (higher, so
    # one address cannot lock anyone out) for every address together.
    otp_lockout_threshold: int = Field(default=10, ge=1)
    otp_number_lockout_threshold: int = Field(default=50, ge=1)
    otp_lockout_seconds: int = Field(default=900, ge=1)
    # Sign-in, verify, reset and signup requests from one client address per minute.
    auth_attempts_per_ip_per_minute: int = Field(default=60, ge=1)
    # Two uses of one refresh token this close together (a client's parallel requests) get the
    # same new token instead of being taken for theft.
    refresh_reuse_grace_seconds: float = Field(default=5.0, ge=0)
    otp_sends_per_number_per_hour: int = Field(default=10, ge=1)
    otp_sends_per_ip_per_hour: int = Field(default=100, ge=1)
    otp_test_numbers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    password_hash_concurrency: int = Field(default=4, ge=1)
    # Hashes allowed to wait for a hashing thread; beyond them a request is 503 at once.
    password_hash_queue: int = Field(default=32, ge=0)
    # Argon2id cost of a new hash (memory in KiB, passes). A stored hash carries its own
    # parameters, so changing these never locks out an existing password.
    password_hash_memory_kib: int = Field(default=65536, ge=32)
    password_hash_time_cost: int = Field(default=3, ge=1)
    # How long an API process may reuse what it read about a signed-in user (session still
    # live, plan) before reading it again. Changes (logout, password, plan) reach every process
    # at once over Redis Pub/Sub; this only bounds an entry's age. 0 reads on every request.
    principal_cache_seconds: float = Field(default=10.0, ge=0)

    # --- chat, queue, AI (used by the chat capability) -------------------------------------
    chatroom_cache_ttl: int = Field(default=300, ge=0)
    # How long an API process may reuse a chatroom list page or room body it served before
    # reading it again. Changes reach every process at once over Redis Pub/Sub; this only
    # bounds an entry's age. 0 turns the in-process level off.
    chatroom_local_cache_seconds: float = Field(default=10.0, ge=0)
    max_message_chars: int = Field(default=8000, ge=1)
    max_system_prompt_chars: int = Field(default=8000, ge=1)
    max_chatrooms_per_user: int = Field(default=1000, ge=1)
    # POST /chatroom/import: the largest body (it has its own limit, above MAX_BODY_BYTES) and
    # the most messages one import may create.
    import_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    import_max_messages: int = Field(default=20_000, ge=1)
    ai_provider: Literal["auto", "gemini", "openai", "demo"] = "auto"
    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    # Another endpoint for the Gemini API (a proxy, or the tests' local fake server).
    gemini_base_url: str | None = None
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o-mini"
    # Several models at once, side by side (docs/configuration.md, "Models"): GEMINI_MODEL and
    # these while GEMINI_API_KEY is set, OPENAI_MODEL and these while OPENAI_BASE_URL is; the
    # demo models are always there. A room's `model` says which serves it.
    gemini_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    openai_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The OpenAI-compatible server's context window (it does not say): the reply's budget is
    # the smaller of this and CONTEXT_MAX_TOKENS.
    openai_context_tokens: int = Field(default=128_000, ge=256)
    # The model of a room without one; unset: AI_PROVIDER's (GEMINI_MODEL, OPENAI_MODEL, demo).
    default_model: str | None = None
    # The models only Pro users may pick; unset: the built-in list (gemini-*-pro, demo-pro).
    pro_models: Annotated[list[str] | None, NoDecode] = None
    demo_chunk_delay_ms: int = Field(default=30, ge=0)
    context_max_tokens: int = Field(default=8000, ge=256)
    ai_max_attempts: int = Field(default=4, ge=1)
    ai_timeout_seconds: float = Field(default=60.0, gt=0)
    # The pause before the first retry, doubled at each further one (at most 30 s), unless
    # the provider said how long to wait (Retry-After).
    ai_retry_delay_seconds: float = Field(default=0.5, gt=0, le=30)
    reply_stale_seconds: int = Field(default=60, ge=1)
    reply_stream_ttl_seconds: int = Field(default=3600, ge=1)
    # How often each sweeper purges expired OTPs, refresh tokens, login guards, idempotency keys.
    purge_interval_seconds: int = Field(default=600, ge=1)

    # --- search ---------------------------------------------------------------------------
    # PostgreSQL's text-search configuration of GET /search (a regconfig such as `simple` or
    # `english`): the migration builds the search columns with it and the API refuses to start
    # when it names no configuration or not the one they were built with.
    search_text_config: str = Field(
        default="simple", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
    )

    # --- attachments ------------------------------------------------------------------------
    # Where uploads are stored: an S3-compatible bucket when S3_BUCKET is set (AWS S3, GCS
    # interoperability, Cloudflare R2, MinIO: S3_ENDPOINT_URL), else under DATA_DIR/attachments.
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    # The most bytes of one file, and of all the files of one message, per tier.
    attachment_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    pro_attachment_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    message_attachments_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    pro_message_attachments_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_attachments_per_message: int = Field(default=10, ge=1)
    # An upload still `pending` this long after it began died mid-way: the purge deletes it.
    attachment_pending_minutes: int = Field(default=60, ge=1)
    # Gemini: attachments sent inline up to this many bytes per request; the rest go through
    # the Files API (whose copies the provider keeps 48 h: reused for 47 h).
    gemini_inline_max_bytes: int = Field(default=15 * 1024 * 1024, ge=0)

    # --- quota and billing (used by the subscriptions capability) --------------------------
    quota_timezone: str = "UTC"
    basic_daily_limit: int = Field(default=5, ge=0)
    pro_daily_limit: int | None = None
    # The optional monthly token budget per tier (prompt + output + thinking tokens of a
    # calendar month in UTC; null: unlimited). Any of them set turns the accounting on for
    # every user; each send then holds TOKEN_BUDGET_RESERVE tokens until its reply ends.
    monthly_token_budget_basic: int | None = Field(default=None, ge=1)
    monthly_token_budget_pro: int | None = Field(default=None, ge=1)
    token_budget_reserve: int = Field(default=2000, ge=1)
    send_per_minute: int = Field(default=20, ge=1)
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    stripe_pro_price_id: str = "price_pro_monthly"
    checkout_success_url: str | None = None
    checkout_cancel_url: str | None = None
    portal_return_url: str | None = None
    past_due_grace_days: int = Field(default=3, ge=0)

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "gemini_models",
        "openai_models",
        "pro_models",
        mode="before",
    )
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("otp_test_numbers", mode="before")
    @classmethod
    def _parse_test_numbers(cls, value: object) -> object:
        """`+15555550100:123456,+15555550101:654321` -> {number: code}."""
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            number, sep, code = item.partition(":")
            code = code.strip()
            if not sep or len(code) != 6 or not code.isdigit():
                raise ValueError(f"OTP_TEST_NUMBERS entry {item!r} must be '<number>:<6 digits>'")
            pairs[number.strip()] = code
        return pairs

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES entry {item!r} is not a network") from exc
        return value

    @model_validator(mode="after")
    def _one_proxy_rule(self) -> Settings:
        if self.trusted_proxy_hops and self.trusted_proxies:
            raise ValueError("set TRUSTED_PROXY_HOPS or TRUSTED_PROXIES, not both")
        return self

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes in production"
                )
            if len(set(secret)) < MIN_SECRET_DISTINCT_CHARS:
                raise ValueError(
                    f"JWT_SECRET must have at least {MIN_SECRET_DISTINCT_CHARS} distinct "
                    "characters in production (a random value, e.g. `openssl rand -base64 32`)"
                )
            if self.otp_test_numbers:
                raise ValueError("OTP_TEST_NUMBERS is refused when ENVIRONMENT=production")
            if self.otp_delivery == "response" and not self.otp_response_in_production:
                raise ValueError(
                    "OTP_DELIVERY=response returns sign-in codes to whoever asks: refused when "
                    "ENVIRONMENT=production unless OTP_RESPONSE_IN_PRODUCTION=true (a demo)"
                )
            if self.otp_delivery == "log":
                raise ValueError(
                    "OTP_DELIVERY=log writes sign-in codes to the log (anyone who reads it can "
                    "sign in as anyone): refused when ENVIRONMENT=production"
                )
            if "*" in self.cors_origins:
                raise ValueError("CORS_ORIGINS may not be '*' in production")
            # `Origin: null` is what sandboxed iframes and file:// pages send: anyone's page.
            if any(origin.lower() == "null" for origin in self.cors_origins):
                raise ValueError("CORS_ORIGINS may not list 'null' in production")
            self._production_webhook_secret()
            self._production_hash_cost()
        if self.otp_delivery == "twilio":
            if not (self.twilio_account_sid and self.twilio_auth_token):
                raise ValueError(
                    "OTP_DELIVERY=twilio needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
                )
            if not (self.twilio_from_number or self.twilio_messaging_service_sid):
                raise ValueError(
                    "OTP_DELIVERY=twilio needs TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"
                )
        return self

    @property
    def otp_in_response(self) -> bool:
        return self.otp_delivery == "response"

    @property
    def otp_response_exposed(self) -> bool:
        """Codes are returned to whoever asks in a production deployment (a demo, on purpose)."""
        return self.otp_in_response and self.environment is Environment.PRODUCTION

    def _production_hash_cost(self) -> None:
        if (
            self.password_hash_memory_kib < MIN_PRODUCTION_HASH_MEMORY_KIB
            or self.password_hash_time_cost < MIN_PRODUCTION_HASH_TIME_COST
        ):
            raise ValueError(
                "PASSWORD_HASH_MEMORY_KIB and PASSWORD_HASH_TIME_COST must be at least "
                f"{MIN_PRODUCTION_HASH_MEMORY_KIB} and {MIN_PRODUCTION_HASH_TIME_COST} in "
                "production (OWASP's least Argon2id cost)"
            )

    def _production_webhook_secret(self) -> None:
        """Set, or needed by a Stripe key, the webhook secret must be a real one: the public
        default (or a placeholder) would let anyone sign events. Neither set: payments off."""
        explicit = "stripe_webhook_secret" in self.model_fields_set
        if not explicit and self.stripe_secret_key is None:
            return
        secret = self.stripe_webhook_secret.get_secret_value()
        body = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
        if (
            secret == DEV_WEBHOOK_SECRET
            or not secret.startswith(WEBHOOK_SECRET_PREFIX)
            or len(body) < MIN_WEBHOOK_SECRET_CHARS
        ):
            raise ValueError(
                "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret in production "
                f"(whsec_ and at least {MIN_WEBHOOK_SECRET_CHARS} more characters, not the "
                "development default)"
            )

    # --- derived -------------------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Accept the URLs hosting providers hand out and pick the async drivers.
            for prefix in ("postgres://", "postgresql://"):
                if url.startswith(prefix):
                    return "postgresql+asyncpg://" + url[len(prefix) :]
            if url.startswith("sqlite:///"):
                return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
            return url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'gemini_backend.db').as_posix()}"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @property
    def is_production_mode(self) -> bool:
        """Production mode: PostgreSQL and Redis, with separate worker processes."""
        return self.is_postgres and bool(self.redis_url)

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def docs_served(self) -> bool:
        """/docs, /redoc and /openapi.json: DOCS_ENABLED, by default on except in production."""
        if self.docs_enabled is not None:
            return self.docs_enabled
        return self.environment is not Environment.PRODUCTION

    @property
    def metrics_served(self) -> bool:
        """/metrics on the API's port: in production only with METRICS_TOKEN (then required)."""
        return self.metrics_token is not None or self.environment is not Environment.PRODUCTION

    @property
    def stripe_mock_enabled(self) -> bool:
        """The built-in Stripe mock serves payments when no Stripe key is set (never in
        production, where payments are unavailable until STRIPE_SECRET_KEY is set)."""
        return self.stripe_secret_key is None and self.environment is not Environment.PRODUCTION

    # Where Checkout and the Billing Portal send the browser back: the web client when it is
    # served (it shows the new plan), else the minimal landing pages of billing/router.py.
    @property
    def success_url(self) -> str:
        return self.checkout_success_url or self._return_page("checkout=success", "success")

    @property
    def cancel_url(self) -> str:
        return self.checkout_cancel_url or self._return_page("checkout=cancelled", "cancelled")

    @property
    def portal_return_target(self) -> str:
        return self.portal_return_url or self._return_page("billing=return", "return")

    def _return_page(self, client_query: str, landing: str) -> str:
        if self.web_client_enabled:
            return f"{self.base_url}/?{client_query}"
        return f"{self.base_url}/subscribe/{landing}"

    def jwt_secret_value(self) -> str:
        """The JWT signing key; outside production one is generated once and kept in DATA_DIR."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return _persisted_secret(self.data_dir / "jwt_secret")

    def otp_secret_value(self) -> bytes:
        if self.otp_secret is not None:
            return self.otp_secret.get_secret_value().encode()
        # A separate key derived from the JWT key, so one leaked OTP hash table reveals nothing
        # about token signing and vice versa.
        return hmac.new(self.jwt_secret_value().encode(), b"otp-hmac-key", hashlib.sha256).digest()


def _persisted_secret(path: Path) -> str:
    """Read the secret at `path`, creating it once; safe when several processes or threads
    start at once (the file appears whole, by a hard link, or not at all)."""
    existing = _read_secret(path)
    if existing is not None:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    try:
        os.link(tmp, path)  # atomic create-if-absent: the first writer wins
    except FileExistsError:
        winner = _read_secret(path)
        assert winner is not None
        value = winner
    finally:
        tmp.unlink(missing_ok=True)
    return value


def _read_secret(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{path} holds a key shorter than {MIN_SECRET_BYTES} bytes: delete the file "
            "(a new key is generated; everyone is signed out) or set JWT_SECRET"
        )
    return value
