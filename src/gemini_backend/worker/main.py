"""`gemini-backend worker`: receive reply jobs from Redis Streams (production mode).

Any number of worker processes can run against one Redis and one PostgreSQL. On SIGTERM or
SIGINT a worker stops taking jobs, lets running replies finish (up to a timeout) and exits; a
reply it could not finish is taken up again by the sweeper of another worker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from taskiq.receiver import Receiver

from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock, SystemClock
from gemini_backend.core.heap import settle_heap
from gemini_backend.services import Services
from gemini_backend.worker.runtime import StreamReplyPipeline

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


async def run_worker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    max_concurrent_replies: int = 200,
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
    on_started: Callable[[Services], None] | None = None,
    settle_heap_at_startup: bool = False,
) -> None:
    """`settle_heap_at_startup`: the process runs only this worker (core/heap.py)."""
    services = Services.build(settings, clock or SystemClock())
    pipeline = services.pipeline
    if not isinstance(pipeline, StreamReplyPipeline):
        raise RuntimeError("the queue worker is for production mode (Redis Streams)")
    broker = pipeline.receiving_broker()
    broker.is_worker_process = True
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests run workers as tasks)
    try:
        await services.pipeline.start(run_sweeper=True)
        receiver = Receiver(
            broker,
            max_async_tasks=max_concurrent_replies,
            run_startup=False,
            propagate_exceptions=False,
            wait_tasks_timeout=shutdown_grace_seconds,
        )
        if on_started is not None:
            on_started(services)
        if settle_heap_at_startup:
            settle_heap()
        log.info(
            "worker_started",
            event_loop=type(loop).__module__.split(".")[0],
            ai_provider=services.provider.name,
            ai_model=services.provider.model,
            ai_models=[model.id for model in services.models.catalogue.models],
        )
        listening = asyncio.create_task(receiver.listen(stop), name="receiver")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({listening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        # The receiver lets running replies finish; its Redis read can fail to notice the stop
        # (seen with taskiq-redis' blocking reads), so the wait is bounded.
        done, _ = await asyncio.wait({listening}, timeout=shutdown_grace_seconds)
        if not done:
            log.warning("receiver_stop_timeout", seconds=shutdown_grace_seconds)
            listening.cancel()
            await asyncio.wait({listening}, timeout=5)
        elif listening.exception() is not None:
            raise listening.exception()  # type: ignore[misc]
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await services.aclose()
        log.info("worker_stopped")
