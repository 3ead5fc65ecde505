"""How long a provider asked us to wait before trying again."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

# A server-requested wait longer than this is not a per-minute limit the worker can sit out
# while holding the job: the error is then not retryable.
MAX_RETRY_AFTER_SECONDS = 60.0


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `retry-after` (seconds or a date).

    `headers` must have lower-case names (httpx's Headers are case-insensitive).
    """
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None
