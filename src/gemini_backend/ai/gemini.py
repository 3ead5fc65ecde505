"""Google's Gemini API through the official `google-genai` SDK (its async client):
`POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse` for replies and one
`:generateContent` call for a chatroom's title.

The SDK's own retries are off (`HttpRetryOptions(attempts=1)`, and its automatic stream
continuation too): the worker's retry policy is the only one, so every failure is turned into a
`ProviderError` whose `retryable` flag and `retry_after` drive it. The SDK talks through an httpx
client owned here, whose timeout applies to each read (a per-chunk stall), like the worker's own
per-chunk timeout; a whole long reply is not cut off. The API key is handed to the SDK (and
kept here only to scrub it out of error texts): it is never written to a log line or a repr.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import httpx
import structlog
from google import genai
from google.genai import errors, types

from gemini_backend.ai.base import (
    Attachment,
    Conversation,
    Delta,
    Finished,
    ProviderError,
    Usage,
)
from gemini_backend.ai.retry_after import MAX_RETRY_AFTER_SECONDS, retry_after_seconds
from gemini_backend.ai.titles import (
    TITLE_INPUT_CHARS,
    TITLE_INSTRUCTION,
    TITLE_MAX_TOKENS,
    clean_title,
    fallback_title,
)

log = structlog.get_logger(__name__)

API_VERSION = "v1beta"
# The SDK would send the per-chunk timeout as the server's deadline for the whole request
# (`X-Server-Timeout`), cutting long replies short; the server gets a generous one instead.
SERVER_DEADLINE_SECONDS = 600

# Finish reasons (and prompt block reasons) that mean the safety system stopped the reply.
BLOCKING_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}
)
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
# Attachments sent inline up to this many bytes a request (the API takes about 20 MB in all).
DEFAULT_INLINE_MAX_BYTES = 15 * 1024 * 1024
# The Files API keeps an upload 48 h: it is reused for an hour less, then uploaded again.
FILE_REUSE_SECONDS = 47 * 3600
MAX_REMEMBERED_UPLOADS = 10_000


class GeminiProvider:
    name = "gemini"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        timeout_seconds: float,
        base_url: str | None = None,
        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.inline_max_bytes = inline_max_bytes
        # Attachment id -> (the Files API's uri, when to upload it again).
        self._uploads: OrderedDict[int, tuple[str, float]] = OrderedDict()
        self._clock = clock
        self._http = httpx.AsyncClient()
        self._client = genai.Client(
            vertexai=False,  # the Gemini API with a key, whatever GOOGLE_GENAI_* says
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url,
                api_version=API_VERSION,
                timeout=max(1, math.ceil(timeout_seconds * 1000)),
                headers={
                    "X-Server-Timeout": str(
                        max(SERVER_DEADLINE_SECONDS, math.ceil(timeout_seconds))
                    )
                },
                retry_options=types.HttpRetryOptions(attempts=1),
                httpx_async_client=self._http,
            ),
        )
        # For scrubbing the key out of error texts before they are logged.
        self._secret = api_key.strip()

    def __repr__(self) -> str:
        return f"GeminiProvider(base_url={self.base_url!r}, model={self.model!r})"

    async def aclose(self) -> None:
        """Release the connections (the SDK's unused sync client too). Safe to call twice."""
        await self._client.aio.aclose()
        self._client.close()
        await self._http.aclose()

    # --- the reply ------------------------------------------------------------------------------
    async def stream(self, conversation: Conversation) -> AsyncGenerator[Delta | Finished, None]:
        produced = False  # a Delta has been yielded: a failure now ends a partial reply
        finish_reason: str | None = None
        block_reason: str | None = None
        usage = Usage()
        config = types.GenerateContentConfig(
            system_instruction=conversation.system_prompt or None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            automatic_continuation=False,
        )
        try:
            contents = await self._contents(conversation)
            response = await self._client.aio.models.generate_content_stream(
                model=self.model, contents=contents, config=config
            )
            try:
                async for chunk in response:
                    if chunk.usage_metadata is not None:
                        usage = _usage_of(chunk.usage_metadata)
                    feedback = chunk.prompt_feedback
                    if feedback is not None and feedback.block_reason is not None:
                        block_reason = _enum_name(feedback.block_reason)
                    for candidate in (chunk.candidates or [])[:1]:
                        for text in _texts(candidate):
                            produced = True
                            yield Delta(text)
                        if candidate.finish_reason is not None:
                            finish_reason = _enum_name(candidate.finish_reason)
            finally:
                aclose = getattr(response, "aclose", None)
                if aclose is not None:  # release the connection when the reader stops early
                    await aclose()
        except Exception as exc:  # every failure becomes a ProviderError the worker understands
            raise self._failed(_provider_error(exc, produced=produced), exc) from exc
        if block_reason is not None:
            # The prompt itself was refused: there is no candidate at all.
            yield Finished(block_reason.lower(), usage, blocked=True)
            return
        if finish_reason is None:
            raise ProviderError(
                "provider_stream_error",
                "the stream ended without a finish reason",
                retryable=not produced,
            )
        yield Finished(
            finish_reason.lower(), usage, blocked=finish_reason in BLOCKING_FINISH_REASONS
        )

    def _failed(self, error: ProviderError, exc: BaseException) -> ProviderError:
        """Log a failed call (with the server's words, the key scrubbed out) and return it."""
        detail = self._scrub(str(getattr(exc, "message", None) or exc))[:500]
        log.warning(
            "provider_call_failed",
            provider=self.name,
            model=self.model,
            code=error.code,
            retryable=error.retryable,
            retry_after=error.retry_after,
            error=_describe(exc),
            detail=detail,
        )
        return error

    def _scrub(self, text: str) -> str:
        key = self._secret
        return text.replace(key, "[redacted]") if len(key) >= 4 else text

    # --- the title ------------------------------------------------------------------------------
    async def title(self, first_message: str) -> str:
        config = types.GenerateContentConfig(
            system_instruction=TITLE_INSTRUCTION,
            temperature=0.2,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        if _thinking_can_be_off(self.model):
            # Thinking would count against the small output budget; a title needs none.
            config.thinking_config = types.ThinkingConfig(thinking_budget=0)
            config.max_output_tokens = TITLE_MAX_TOKENS
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model,
                contents=first_message[:TITLE_INPUT_CHARS],
                config=config,
            )
            candidates = response.candidates or []
            text = "".join(_texts(candidates[0])) if candidates else ""
            title = clean_title(text)
        except Exception as exc:  # a title is a nicety: any failure falls back
            log.warning("title_fallback", provider=self.name, error=_describe(exc))
            title = ""
        return title or fallback_title(first_message)

    # --- attachments ----------------------------------------------------------------------------
    async def _contents(self, conversation: Conversation) -> list[types.Content]:
        """The turns as contents: each one's text, then its files. Files go inline (base64 in
        the request) while the request's inline bytes stay within `inline_max_bytes`; the
        rest through the Files API. Images, PDFs and text files alike are parts with their
        media type (Gemini reads PDFs and text as documents)."""
        inline_left = self.inline_max_bytes
        contents = []
        for turn in conversation.turns:
            parts = [types.Part(text=turn.text)] if turn.text or not turn.attachments else []
            for attachment in turn.attachments:
                if attachment.size <= inline_left:
                    inline_left -= attachment.size
                    data = await attachment.read()
                    parts.append(types.Part.from_bytes(data=data, mime_type=attachment.media_type))
                else:
                    uri = await self._uploaded(attachment)
                    parts.append(types.Part.from_uri(file_uri=uri, mime_type=attachment.media_type))
            contents.append(
                types.Content(role="user" if turn.role == "user" else "model", parts=parts)
            )
        return contents

    async def _uploaded(self, attachment: Attachment) -> str:
        """The Files API's uri of the attachment, uploaded once per FILE_REUSE_SECONDS (the
        API deletes its copy after 48 h)."""
        now = self._clock()
        found = self._uploads.get(attachment.id)
        if found is not None and found[1] > now:
            self._uploads.move_to_end(attachment.id)
            return found[0]
        data = await attachment.read()
        uploaded = await self._client.aio.files.upload(
            file=io.BytesIO(data),
            config=types.UploadFileConfig(
                mime_type=attachment.media_type, display_name=attachment.filename[:512]
            ),
        )
        if not uploaded.uri:
            raise ValueError("the Files API returned no uri")
        self._uploads[attachment.id] = (uploaded.uri, now + FILE_REUSE_SECONDS)
        while len(self._uploads) > MAX_REMEMBERED_UPLOADS:
            self._uploads.popitem(last=False)
        return uploaded.uri


def _texts(candidate: types.Candidate) -> list[str]:
    """The candidate's visible text parts (thought summaries are not part of the reply)."""
    content = candidate.content
    if content is None or not content.parts:
        return []
    return [part.text for part in content.parts if part.text and not part.thought]


def _usage_of(metadata: types.GenerateContentResponseUsageMetadata) -> Usage:
    return Usage(
        prompt_tokens=metadata.prompt_token_count,
        output_tokens=metadata.candidates_token_count,
        thinking_tokens=metadata.thoughts_token_count,
    )


def _enum_name(value: Any) -> str:
    """`FinishReason.STOP` -> "STOP"; a value the SDK does not know yet passes as its text."""
    raw = getattr(value, "value", value)
    return str(raw).upper()


def _thinking_can_be_off(model: str) -> bool:
    """Gemini 2.5 Flash models accept a thinking budget of 0; Pro and newer models refuse it."""
    return "2.5-flash" in model


# --- the mapping --------------------------------------------------------------------------------
def _provider_error(exc: Exception, *, produced: bool) -> ProviderError:
    message = _describe(exc)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        # A stall is a timeout wherever it happens, as the worker's own per-chunk timeout says.
        return ProviderError("provider_timeout", message, retryable=not produced)
    if produced:
        # The client may already show the partial text: the reply fails with what it has.
        return ProviderError("provider_stream_error", message, retryable=False)
    if isinstance(exc, errors.APIError):
        return _api_error(exc, message)
    if isinstance(exc, httpx.TransportError):
        # Refused or dropped connections, a stream cut before its first chunk.
        return ProviderError("provider_unavailable", message, retryable=True)
    if isinstance(exc, ValueError):  # an unreadable chunk (not JSON, not a response)
        return ProviderError("provider_stream_error", message, retryable=True)
    return ProviderError("provider_error", message, retryable=False)


def _api_error(exc: errors.APIError, message: str) -> ProviderError:
    status = exc.code if isinstance(exc.code, int) else 0
    details = _details(exc)
    if status == 429:
        if _daily_quota(details):
            return ProviderError("provider_quota_exhausted", message, retryable=False)
        retry_after = _retry_delay(details)
        if retry_after is None:
            retry_after = retry_after_seconds(_headers(exc))
        retryable = retry_after is None or retry_after <= MAX_RETRY_AFTER_SECONDS
        return ProviderError(
            "provider_rate_limited", message, retryable=retryable, retry_after=retry_after
        )
    if status == 408 or status >= 500:
        retry_after = _retry_delay(details)
        if retry_after is None:
            retry_after = retry_after_seconds(_headers(exc))
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
            retry_after = None
        return ProviderError(
            "provider_unavailable", message, retryable=True, retry_after=retry_after
        )
    if status in (401, 403) or _api_key_rejected(details):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT and an API_KEY_INVALID reason.
        return ProviderError("provider_auth", message, retryable=False)
    if status == 404:
        return ProviderError("provider_not_found", message, retryable=False)
    if 400 <= status < 500:
        return ProviderError("provider_bad_request", message, retryable=False)
    # An in-stream error event without a usable code.
    return ProviderError("provider_stream_error", message, retryable=True)


def _details(exc: errors.APIError) -> list[Mapping[str, Any]]:
    """The `google.rpc` details of Google's error body (`{"error": {..., "details": [...]}}`)."""
    body = exc.details
    error = body.get("error", body) if isinstance(body, Mapping) else None
    found = error.get("details") if isinstance(error, Mapping) else None
    if not isinstance(found, Sequence) or isinstance(found, str):
        return []
    return [item for item in found if isinstance(item, Mapping)]


def _daily_quota(details: list[Mapping[str, Any]]) -> bool:
    """A `QuotaFailure` naming a per-day quota: it resets at midnight Pacific, not in seconds."""
    for detail in details:
        if detail.get("@type") != _QUOTA_FAILURE:
            continue
        for violation in detail.get("violations") or []:
            if not isinstance(violation, Mapping):
                continue
            quota_id = str(violation.get("quotaId") or "")
            if "perday" in quota_id.lower():
                return True
    return False


def _api_key_rejected(details: list[Mapping[str, Any]]) -> bool:
    return any(
        detail.get("@type") == _ERROR_INFO and str(detail.get("reason", "")).startswith("API_KEY_")
        for detail in details
    )


def _retry_delay(details: list[Mapping[str, Any]]) -> float | None:
    """`RetryInfo.retryDelay`, a protobuf Duration in JSON: "7s", "0.5s", "1.250s"."""
    for detail in details:
        if detail.get("@type") != _RETRY_INFO:
            continue
        match = _DURATION.match(str(detail.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def _headers(exc: errors.APIError) -> Mapping[str, str]:
    headers = getattr(exc.response, "headers", None)
    if not isinstance(headers, Mapping):
        return {}
    return {str(key).lower(): str(value) for key, value in headers.items()}


def _describe(exc: BaseException) -> str:
    """A log-safe description: the error's class, status and gRPC status, never a header."""
    parts = [type(exc).__name__]
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    if isinstance(code, int):
        parts.append(str(code))
    if isinstance(status, str) and status:
        parts.append(status)
    return " ".join(parts)
