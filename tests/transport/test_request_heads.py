"""The real `serve` process bounds a request's head by itself: a head over MAX_HEADER_BYTES
gets 431 (or the connection closed) without the server buffering it, and a head that has not
arrived HEADER_READ_TIMEOUT_SECONDS after the connection (or the request's first byte) is
closed, however slowly it trickles in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKEND, Storage
from tests.processes import ServiceProcess, free_port, running_service, service_env

pytestmark = pytest.mark.slow  # real `gemini-backend` processes

MAX_HEADER_BYTES = 16_384
HEAD_TIMEOUT = 1.0
# Far more than the timeout, far less than the keep-alive timeout (75 s): an EOF before this
# comes from the head timer.
EOF_WITHIN = 8.0


@pytest.fixture
def server(
    storage: Storage, database_url: str, tmp_path: Path
) -> Iterator[tuple[int, ServiceProcess]]:
    port = free_port()
    env = service_env(
        BACKEND,
        database_url=database_url,
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        JWT_SECRET="x" * 40,
        LOG_LEVEL="WARNING",
        MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        HEADER_READ_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    with running_service(BACKEND, env, tmp_path, port) as api:
        yield port, api
        assert "Traceback" not in api.output()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _exchange(port: int, request: bytes) -> bytes:
    """Send `request` in one write; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), EOF_WITHIN)
    finally:
        writer.close()


def _get(headers: bytes = b"") -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + headers + b"\r\n"


async def _flood_header(port: int, total: int) -> tuple[int, bytes, float]:
    """A GET whose one header is `total` bytes, written as fast as the server takes it while
    its answer is read: (bytes written before the server stopped taking them, the answer,
    seconds to the end of the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = bytearray()

    async def read() -> None:
        try:
            while chunk := await reader.read(65536):
                answer.extend(chunk)
        except ConnectionError:
            pass

    reading = asyncio.create_task(read())
    sent = 0
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
        chunk = b"a" * 65536
        while sent < total and not reading.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    await asyncio.wait_for(reading, EOF_WITHIN)
    writer.close()
    return sent, bytes(answer), time.monotonic() - started


def test_a_huge_header_is_refused_without_being_buffered(server):
    port, api = server

    async def scenario() -> None:
        # Just over the limit, in one write: a clean 431 in the error model.
        answer = await _exchange(port, _get(b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"))
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert answer.endswith(b'"code": "headers_too_large"}'), answer[-200:]
        # Many headers adding up to over the limit.
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
        assert (await _exchange(port, _get(many))).startswith(b"HTTP/1.1 431 ")
        # Under the limit: served.
        fits = _get(b"X-Fits: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n")
        assert (await _exchange(port, fits)).startswith(b"HTTP/1.1 200 ")

        before = _rss_bytes(api.process.pid)
        results = await asyncio.gather(*(_flood_header(port, 20 * 2**20) for _ in range(5)))
        growth = _rss_bytes(api.process.pid) - before
        for sent, answer, seconds in results:
            # Refused (431, or closed before the answer could be read) long before 20 MB.
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert sent < 8 * 2**20, sent
            assert seconds < EOF_WITHIN
        assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB"
        assert (await _exchange(port, _get())).startswith(b"HTTP/1.1 200 ")

    asyncio.run(scenario())


async def _seconds_to_eof(port: int, send: bytes, drip: bytes = b"") -> float:
    """Send `send`, then (if any) `drip` one byte every 0.2 s; seconds until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(send)

        async def trickle() -> None:
            for byte in drip:
                await asyncio.sleep(0.2)  # the attack's pace, not a synchronisation
                writer.write(bytes([byte]))

        trickling = asyncio.create_task(trickle())
        try:
            rest = await asyncio.wait_for(reader.read(), EOF_WITHIN)
        finally:
            trickling.cancel()
        assert rest == b"" or rest.startswith(b"HTTP/1.1 200 ")  # only a complete first request
        return time.monotonic() - started
    finally:
        writer.close()


def test_a_head_that_does_not_arrive_in_time_is_closed(server):
    port, _api = server
    first = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"

    async def scenario() -> None:
        waits = await asyncio.gather(
            _seconds_to_eof(port, b""),  # connects, sends nothing
            _seconds_to_eof(port, b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: "),  # stalls
            _seconds_to_eof(port, b"GET /health HTTP/1.1\r\n", drip=b"X-Slow: " + b"z" * 60),
            # A kept-alive connection's next request.
            _seconds_to_eof(port, first + b"GET /health HTTP/1.1\r\nHo"),
        )
        for seconds in waits:
            assert HEAD_TIMEOUT * 0.9 <= seconds < EOF_WITHIN, waits
        # A request whose head arrives in time is served as before.
        assert (await _exchange(port, _get())).startswith(b"HTTP/1.1 200 ")

    asyncio.run(scenario())
