"""`gemini-backend serve | worker | migrate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gemini_backend.config import Settings
from gemini_backend.core.http_protocol import BoundedHttpToolsProtocol


class _GracefulServer(uvicorn.Server):
    """A SIGTERM/SIGINT-driven graceful shutdown ends the process with status 0.

    uvicorn re-raises the captured signal after shutting down, so the process would die by it
    (status 143); process managers and CI read a clean shutdown as exit 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def _serve(args: argparse.Namespace) -> int:
    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    migrate = args.migrate if args.migrate is not None else not settings.is_production_mode
    if migrate:
        from gemini_backend.migrate import upgrade_to_head

        upgrade_to_head(settings)
    workers = args.workers
    if workers > 1 and not settings.is_production_mode:
        print(
            "embedded mode runs one API process (its queue and cache live in it); "
            "set DATABASE_URL to PostgreSQL and REDIS_URL to run several",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        # The client address behind proxies is the application's (TRUSTED_PROXY_HOPS): uvicorn's
        # own trusts the left-most X-Forwarded-For entry, which the client writes.
        "proxy_headers": False,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": settings.keep_alive_seconds,
        # Bounds on a request's head (MAX_HEADER_BYTES, HEADER_READ_TIMEOUT_SECONDS).
        "http": BoundedHttpToolsProtocol,
    }
    if workers > 1:
        _prepare_multiprocess_metrics()
        uvicorn.run("gemini_backend.main:create_served_app", workers=workers, **options)
    else:
        _GracefulServer(uvicorn.Config("gemini_backend.main:create_served_app", **options)).run()
    return 0


def _prepare_multiprocess_metrics() -> None:
    """Several API processes: each writes its metrics to files in PROMETHEUS_MULTIPROC_DIR and
    /metrics (in whichever process answers) adds them up. Set before the workers start; a
    directory left by an earlier run is emptied so old samples are not counted again."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gemini-backend-metrics-")


def _migrate(_args: argparse.Namespace) -> int:
    from gemini_backend.migrate import upgrade_to_head

    upgrade_to_head(Settings())
    print("database is at the latest migration")
    return 0


def _stop_before_start(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # nothing was taken from the queue yet: a clean stop


def _worker(_args: argparse.Namespace) -> int:
    # Until the worker's own handlers are on (after its imports and start-up), a SIGTERM still
    # ends it with status 0 rather than by the signal.
    signal.signal(signal.SIGTERM, _stop_before_start)
    from gemini_backend.core.logging import configure_logging
    from gemini_backend.worker.main import run_worker

    settings = Settings()
    if not settings.is_production_mode:
        print(
            "the queue worker is for production mode (PostgreSQL DATABASE_URL and REDIS_URL); "
            "in embedded mode `serve` runs the worker inside the API process",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        # The worker's own /metrics (replies, provider latency, time to first token).
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    # uvloop when installed (as `serve` gets it from uvicorn): a worker's CPU goes mostly to
    # socket round trips, which the stock event loop spends more Python on.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run_worker(settings, settle_heap_at_startup=True))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on this platform (uvicorn[standard] skips it on Windows)
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gemini-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (embedded mode: with its worker in-process)")
    serve.add_argument("--host", default=None, help="default: HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="default: PORT (8000)")
    serve.add_argument("--workers", type=int, default=1, help="API processes (production mode)")
    serve.add_argument(
        "--migrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply migrations first (default: yes in embedded mode, no in production mode)",
    )
    serve.set_defaults(func=_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    sub.add_parser("worker", help="run a queue worker (production mode)").set_defaults(func=_worker)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
