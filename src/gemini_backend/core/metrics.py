"""Prometheus metrics (prometheus-client), safe with several processes.

With `PROMETHEUS_MULTIPROC_DIR` set (done by `gemini-backend serve --workers N`, or by the
deployment), every process writes its samples to files there and `/metrics` aggregates them;
otherwise the process's own registry is served. Worker processes serve their own `/metrics` on
`WORKER_METRICS_PORT` when it is set.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to the end of the response (streams: to the end of the stream).",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
REPLIES = Counter(
    "replies_total",
    "AI replies finished, by outcome (completed, failed, blocked, cancelled) and error code.",
    ["outcome", "error"],
)
PROVIDER_LATENCY = Histogram(
    "ai_provider_duration_seconds",
    "Whole generation time of a reply (all attempts), by provider.",
    ["provider"],
    buckets=_PROVIDER_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ai_time_to_first_token_seconds",
    "From the worker's claim of a reply to its first streamed chunk, by provider.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
PROVIDER_ATTEMPTS = Counter(
    "ai_provider_attempts_total", "Provider calls made, by provider.", ["provider"]
)
QUEUE_DEPTH = Gauge(
    "reply_queue_depth",
    "Replies waiting in `queued` (read from the database at scrape time).",
    multiprocess_mode="mostrecent",
)
QUEUE_LAG = Gauge(
    "reply_queue_oldest_age_seconds",
    "Age of the oldest queued reply (0 when none): the job lag.",
    multiprocess_mode="mostrecent",
)
JOB_LAG = Histogram(
    "reply_job_lag_seconds",
    "From a reply's creation to a worker claiming it.",
    buckets=_LATENCY_BUCKETS,
)
QUOTA_REJECTIONS = Counter(
    "quota_rejections_total",
    "Sends refused by a limit: daily_limit (the daily quota) or per_minute (the throttle).",
    ["limit"],
)
WEBHOOK_EVENTS = Counter(
    "stripe_webhook_events_total",
    "Stripe webhook deliveries by event type and result "
    "(applied, stale, ignored, duplicate, invalid_signature, invalid_payload, error).",
    ["type", "result"],
)
CACHE_REQUESTS = Counter(
    "cache_requests_total", "Cache lookups by cache and result (hit, miss).", ["cache", "result"]
)


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of all processes in multi-process mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
