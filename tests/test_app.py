"""The application shell: operations endpoints, request ids, error contract, body limits,
trailing slashes and what reaches the logs."""

from __future__ import annotations

import gc
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog

from gemini_backend.main import create_app
from tests.conftest import BACKEND
from tests.helpers import bearer, new_number, request_otp, sign_in

MIB = 1024 * 1024
STRONG_PASSWORD = "violet-harbour-lantern-42"
NEW_PASSWORD = "copper-meadow-quartz-77"
WRONG_PASSWORD = "wrong-guess-passphrase-1"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error contract: the status, a JSON body of exactly {detail, code}, no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail", "code"}, body
    assert body["code"] == code, body
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert "X-Request-ID" in response.headers
    return body


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def asgi_client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# --- operations ----------------------------------------------------------------------------


async def test_health(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready(client):
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["mode"] == BACKEND
    assert body["checks"], body
    assert all(value == "ok" for value in body["checks"].values()), body
    assert "database" in body["checks"]
    if BACKEND == "production":
        assert "redis" in body["checks"]
    else:
        assert "redis" not in body["checks"]


async def test_ready_is_503_when_the_database_is_unreachable(make_settings, clock):
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nowhere"
    app = create_app(make_settings(database_url=url), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        response = await client.get("/ready")
        # Liveness does no I/O: the process is alive even without its database.
        health = await client.get("/health")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["database"].startswith("error")
    assert health.status_code == 200


class _PgError(Exception):
    """Stands for an asyncpg error: what the handler reads is its SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "status", "code"),
    [
        ("57P03", 503, "service_unavailable"),  # "the database system is shutting down"
        ("57P01", 503, "service_unavailable"),  # terminated by an administrator
        ("08006", 503, "service_unavailable"),  # connection failure
        ("53300", 503, "service_unavailable"),  # too many connections
        ("22P02", 500, "internal_error"),  # a bug of ours is not an outage
    ],
)
async def test_database_outages_are_503_and_bugs_500(make_settings, clock, sqlstate, status, code):
    from sqlalchemy.exc import DBAPIError

    app = create_app(make_settings(), clock=clock)

    async def failing() -> None:
        raise DBAPIError("SELECT 1", None, _PgError(sqlstate))

    app.add_api_route("/test-failing", failing)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/test-failing")
    assert_error(response, status, code)
    assert ("Retry-After" in response.headers) is (status == 503)


# --- request ids ---------------------------------------------------------------------------


async def test_request_id_is_generated(client):
    first = await client.get("/health")
    second = await client.get("/health")
    for response in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "request_id", ["abc-123", "0f7c1e2a-9b1d-4c55-8e0e-3c1c2f4d5e6f", "trace.id:42_x"]
)
async def test_sane_request_id_is_echoed(client, request_id):
    response = await client.get("/health", headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "request_id", ["x" * 300, "has spaces in it", "semi;colon", 'quote"d', "<script>"]
)
async def test_garbage_request_id_is_replaced(client, request_id):
    response = await client.get("/health", headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_request_id_on_error_responses(client):
    not_found = await client.get("/no/such/route", headers={"X-Request-ID": "err-404"})
    assert_error(not_found, 404, "not_found")
    assert not_found.headers["X-Request-ID"] == "err-404"

    invalid = await client.post("/auth/send-otp", json={}, headers={"X-Request-ID": "err-422"})
    assert_error(invalid, 422, "validation_error")
    assert invalid.headers["X-Request-ID"] == "err-422"

    generated = await client.get("/no/such/route")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])


# --- routing -------------------------------------------------------------------------------


async def test_unknown_route_is_json_404(client):
    response = await client.get("/definitely-not-here")
    body = assert_error(response, 404, "not_found")
    assert isinstance(body["detail"], str)
    assert body["detail"]


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "/health"), ("GET", "/auth/send-otp"), ("PUT", "/user/me")]
)
async def test_wrong_method_is_json_405(client, method, path):
    response = await client.request(method, path)
    body = assert_error(response, 405, "method_not_allowed")
    assert body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/health", {"GET"}),
        ("OPTIONS", "/chatroom", {"GET", "POST"}),
        ("PUT", "/chatroom/1", {"GET", "PATCH", "DELETE"}),
        ("PUT", "/chatroom/1/", {"GET", "PATCH", "DELETE"}),
        ("OPTIONS", "/chatroom/usage", {"GET"}),  # not a room: its own path
    ],
)
async def test_405_allow_lists_every_method_of_the_path(client, method, path, allowed):
    # A path served by one route per method: every one of them, not only the first route's.
    response = await client.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == allowed


async def test_trailing_slash_on_post_is_served_without_redirect(client):
    number = new_number()
    response = await client.post("/auth/send-otp/", json={"mobile_number": number})
    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    assert re.fullmatch(r"\d{6}", response.json()["otp"])


async def test_trailing_slash_on_get_is_served_without_redirect(client):
    tokens = await sign_in(client)
    response = await client.get("/user/me/", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == tokens["user"]["id"]
    health = await client.get("/health/")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


# --- body limits ---------------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid JSON send-otp body of at least `size` bytes (the padding field is ignored)."""
    body = json.dumps({"mobile_number": new_number(), "padding": "x" * size}).encode()
    assert len(body) > size
    return body


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_json_body_over_one_mib_is_413(client):
    response = await client.post(
        "/auth/send-otp",
        content=padded_body(MIB),
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")


async def test_chunked_body_over_one_mib_is_413(client):
    request = client.build_request(
        "POST",
        "/auth/send-otp",
        content=chunks(padded_body(MIB + 1)),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request)
    assert_error(response, 413, "payload_too_large")


async def test_body_just_under_the_limit_is_accepted(client):
    body = padded_body(MIB - 200)
    assert len(body) <= MIB
    response = await client.post(
        "/auth/send-otp", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
async def test_body_limit_follows_settings(client):
    small = await client.post(
        "/auth/send-otp", content=padded_body(1000), headers={"Content-Type": "application/json"}
    )
    assert small.status_code == 200, small.text

    too_big = await client.post(
        "/auth/send-otp", content=padded_body(2048), headers={"Content-Type": "application/json"}
    )
    assert_error(too_big, 413, "payload_too_large")

    chunked = client.build_request(
        "POST",
        "/auth/send-otp",
        content=chunks(padded_body(2048), size=512),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in chunked.headers
    assert_error(await client.send(chunked), 413, "payload_too_large")


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"mobile_number": ', b"{'single': 'quotes'}", b"not json"])
async def test_malformed_json_is_400(client, body):
    response = await client.post(
        "/auth/send-otp", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


async def test_non_json_content_type_is_415(client):
    response = await client.post(
        "/auth/send-otp",
        content=f"mobile_number={new_number()}",
        headers={"Content-Type": "text/plain"},
    )
    assert_error(response, 415, "unsupported_media_type")


async def test_missing_field_is_422_with_a_list(client):
    response = await client.post("/auth/verify-otp", json={"mobile_number": new_number()})
    body = assert_error(response, 422, "validation_error")
    assert isinstance(body["detail"], list)
    assert body["detail"]
    for item in body["detail"]:
        assert "input" not in item
        assert "url" not in item
        assert {"loc", "msg", "type"} <= set(item)
    assert any(item["loc"][-1] == "otp" for item in body["detail"])


SECRET = "my-Secret-Passw0rd-do-not-echo"


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        # The whole body is the `input` of a missing-field error.
        ("/auth/signup", {"password": SECRET}),
        ("/auth/login", {"password": SECRET}),
        # The password itself fails validation.
        ("/auth/signup", {"mobile_number": "+919876500001", "password": SECRET * 10}),
        ("/auth/signup", {"mobile_number": "+919876500001", "password": [SECRET]}),
        ("/auth/login", {"mobile_number": "+919876500001", "password": SECRET * 100}),
        ("/auth/change-password", {"current_password": SECRET, "new_password": "short"}),
        ("/auth/reset-password", {"mobile_number": "1", "otp": "x", "new_password": SECRET * 10}),
    ],
)
async def test_422_never_echoes_a_password(client, path, payload):
    headers = {}
    if path == "/auth/change-password":
        headers = bearer(await sign_in(client))
    response = await client.post(path, json=payload, headers=headers)
    body = assert_error(response, 422, "validation_error")
    assert isinstance(body["detail"], list)
    for item in body["detail"]:
        assert "input" not in item
    assert SECRET not in response.text
    assert SECRET[:12] not in response.text


# --- logs ----------------------------------------------------------------------------------


def _absent(secret: str, text: str) -> bool:
    """`secret` does not occur in `text` as a token of its own (a 6-digit OTP may legitimately
    appear inside a timestamp's microseconds or a hex request id)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", text) is None


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the logging set-up of before the test: the one made inside it writes to a
    `capsys` stream that pytest closes when the test ends."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_logs_never_contain_secrets(capsys, make_settings, clock, log_level):
    # pytest gives `capsys` a new stream in each phase of a test, so the app (which binds its
    # log output to sys.stderr when it is created) is built here, in the test's own phase.
    app = create_app(make_settings(log_level=log_level), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        tokens, otps = await _exercise_auth(client)
    captured = capsys.readouterr()
    logs = captured.err + captured.out
    assert "startup" in logs, logs
    assert "shutdown" in logs, logs
    request_lines = [line for line in logs.splitlines() if "request" in line]
    assert len(request_lines) >= 10, logs
    assert "/auth/change-password" in logs

    secrets = [STRONG_PASSWORD, NEW_PASSWORD, WRONG_PASSWORD]
    for token_response in tokens:
        secrets += [token_response["access_token"], token_response["refresh_token"]]
        # No fragment of a JWT either (its signature alone is worth hiding).
        secrets.append(token_response["access_token"].rsplit(".", 1)[-1])
    for secret in secrets:
        assert secret not in logs, f"a secret reached the logs: {secret[:6]}..."
    for code in otps:
        assert _absent(code, logs), f"the OTP {code} reached the logs"


@pytest.mark.usefixtures("restore_logging")
async def test_debug_logs_hold_no_password_hashes_or_digests(capsys, make_settings, clock):
    app = create_app(make_settings(log_level="DEBUG"), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        await _exercise_auth(client)
    logs = capsys.readouterr().err
    assert "request" in logs
    assert "$argon2" not in logs
    digests = re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", logs)
    assert not digests, f"{len(digests)} SHA-256 digests (OTP / refresh token) in the logs"


async def _exercise_auth(
    client: httpx.AsyncClient,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every flow that carries a secret; returns the token responses and the OTPs issued."""
    number = new_number()
    signup = await client.post(
        "/auth/signup", json={"mobile_number": number, "password": STRONG_PASSWORD}
    )
    assert signup.status_code == 201, signup.text

    otp = await request_otp(client, number)
    verified = await client.post(
        "/auth/verify-otp",
        json={"mobile_number": number, "otp": otp, "password": STRONG_PASSWORD},
    )
    assert verified.status_code == 200, verified.text

    # A refused body and a failed login too: their passwords must not be logged either.
    refused = await client.post("/auth/login", json={"password": WRONG_PASSWORD})
    assert refused.status_code == 422, refused.text
    failed = await client.post(
        "/auth/login", json={"mobile_number": number, "password": WRONG_PASSWORD}
    )
    assert failed.status_code == 401, failed.text

    login = await client.post(
        "/auth/login", json={"mobile_number": number, "password": STRONG_PASSWORD}
    )
    assert login.status_code == 200, login.text

    refreshed = await client.post(
        "/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text

    changed = await client.post(
        "/auth/change-password",
        json={"current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(refreshed.json()),
    )
    assert changed.status_code == 200, changed.text

    # A second number signs in with OTP only: another code that must stay out of the logs.
    second = new_number()
    second_otp = await request_otp(client, second)
    other = await client.post("/auth/verify-otp", json={"mobile_number": second, "otp": second_otp})
    assert other.status_code == 200, other.text

    tokens = [r.json() for r in (verified, login, refreshed, changed, other)]
    return tokens, [otp, second_otp]


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_opentelemetry_only_when_configured(make_settings, clock, enabled: bool) -> None:
    """OPENTELEMETRY=true hands FastAPI's native telemetry its defaults (the global providers);
    otherwise it is off, and no request looks the providers up."""
    app = create_app(make_settings(opentelemetry=enabled), clock=clock)
    config = app._native_telemetry.config
    assert [config["tracing"], config["metrics"], config["logs"]] == [enabled] * 3


async def test_only_a_served_app_settles_its_heap(make_settings, clock) -> None:
    """`gemini-backend serve`'s app moves what it built at startup out of the garbage
    collector's sight (gc.freeze); an app made by a test, one of hundreds per process, does not."""
    assert gc.get_freeze_count() == 0
    plain = create_app(make_settings(), clock=clock)
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0
    served = create_app(make_settings(), clock=clock, settle_heap_at_startup=True)
    try:
        async with served.router.lifespan_context(served):
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
