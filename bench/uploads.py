"""Upload throughput and the API process's memory under concurrent uploads.

`python -m bench.uploads` starts one `gemini-backend serve` (embedded mode, a fresh DATA_DIR,
attachments on the local disk), signs a user in and measures:

1. one 10 MB file uploaded at a time (`--runs` times): MB/s (10^6 bytes a second), median;
2. 20 uploads at once (`--concurrency`) of 1 MB, then of 10 MB: the aggregate MB/s and the
   process's RSS: its peak (VmHWM, kernel-kept) after each round and sampled every 20 ms.

If memory grew with the file size, the peak after the 10 MB round would exceed the one after
the 1 MB round by about 20 x 9 MB; the body is streamed to storage, so it should not.
The client streams each body in 64 KiB chunks from one buffer (it holds no per-upload copy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from bench.api import Api, number
from bench.procs import Proc, clean_env, free_port, rss_kb

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "benchUploadBoundary"
CHUNK = 64 * 1024


def png_of(size: int) -> bytes:
    """A valid PNG of about `size` bytes (the bulk in an ancillary text chunk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    fixed = 8 + len(header) + len(pixels) + 12 + 12 + 4
    padding = chunk(b"tEXt", b"pad\x00" + b"x" * max(0, size - fixed))
    return b"\x89PNG\r\n\x1a\n" + header + padding + pixels + chunk(b"IEND", b"")


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="bench.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def upload(client: httpx.AsyncClient, url: str, token: str, data: bytes) -> None:
    response = await client.post(
        url,
        content=body(data),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    if response.status_code != 201:
        raise RuntimeError(f"upload: {response.status_code} {response.text[:300]}")


async def sample_rss(pid: int, stop: asyncio.Event, seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(rss_kb(pid))
        await asyncio.sleep(0.02)


async def concurrent(
    client: httpx.AsyncClient, url: str, token: str, data: bytes, count: int, pid: int
) -> tuple[float, int, int]:
    """(aggregate MB/s, highest sampled RSS kB, VmHWM kB after)."""
    stop, seen = asyncio.Event(), [rss_kb(pid)]
    sampler = asyncio.create_task(sample_rss(pid, stop, seen))
    started = time.perf_counter()
    await asyncio.gather(*(upload(client, url, token, data) for _ in range(count)))
    elapsed = time.perf_counter() - started
    stop.set()
    await sampler
    return count * len(data) / 1e6 / elapsed, max(seen), peak_kb(pid)


async def measure(base: str, pid: int, runs: int, count: int) -> None:
    async with Api(base) as api:
        user = await api.sign_in(number(1, 9_000_000_000))
        room = await api.create_room(user.token, "bench uploads")
    url = f"{base}/chatroom/{room}/attachments"
    ten, one = png_of(10_000_000), png_of(1_000_000)
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await upload(client, url, user.token, one)  # warm up
        baseline = rss_kb(pid)
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            await upload(client, url, user.token, ten)
            rates.append(len(ten) / 1e6 / (time.perf_counter() - started))
        print(f"RSS before the rounds: {baseline / 1024:.1f} MiB (VmHWM {peak_kb(pid) / 1024:.1f})")
        print(
            f"one 10 MB upload at a time: {statistics.median(rates):.1f} MB/s median "
            f"(min {min(rates):.1f}, max {max(rates):.1f}, {runs} runs)"
        )
        for label, data in (("1 MB", one), ("10 MB", ten)):
            rate, sampled, hwm = await concurrent(client, url, user.token, data, count, pid)
            print(
                f"{count} uploads of {label} at once: {rate:.1f} MB/s in all; RSS at most "
                f"{sampled / 1024:.1f} MiB sampled, VmHWM {hwm / 1024:.1f} MiB after "
                f"(+{(sampled - baseline) / 1024:.1f} MiB over the start)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gb-bench-uploads-") as tmp:
        port = free_port()
        env = clean_env(DATA_DIR=tmp, LOG_LEVEL="WARNING", SEND_PER_MINUTE="1000")
        proc = Proc(
            "api",
            [sys.executable, "-m", "gemini_backend.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            log_dir=Path(tmp),
        )
        try:
            base = f"http://127.0.0.1:{port}"
            proc.wait_http(f"{base}/health")
            asyncio.run(measure(base, proc.pid, args.runs, args.concurrency))
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
