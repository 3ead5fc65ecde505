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

import asyncio
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
    Citations,
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    ProviderError,
    StreamItem,
    Thought,
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
# A file the Files API is still processing is looked at again (files.get) after this many
# seconds, the wait doubling up to FILE_POLL_MAX_SECONDS, for at most DEFAULT_FILE_WAIT_SECONDS
# in all: within the worker's AI_TIMEOUT_SECONDS (60 by default) for the reply's first chunk.
FILE_POLL_FIRST_SECONDS = 0.25
FILE_POLL_MAX_SECONDS = 4.0
DEFAULT_FILE_WAIT_SECONDS = 45.0


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
        file_wait_seconds: float = DEFAULT_FILE_WAIT_SECONDS,
        file_poll_seconds: float = FILE_POLL_FIRST_SECONDS,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.inline_max_bytes = inline_max_bytes
        self.file_wait_seconds = file_wait_seconds
        self.file_poll_seconds = file_poll_seconds
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
    async def stream(
        self, conversation: Conversation, options: GenerationOptions
    ) -> AsyncGenerator[StreamItem, None]:
        reading = _Reading()
        try:
            contents = await self._contents(conversation)
            response = await self._client.aio.models.generate_content_stream(
                model=self.model,
                contents=contents,
                config=_config(self.model, conversation, options),
            )
            try:
                async for chunk in response:
                    for item in reading.items_of(chunk):
                        yield item
            finally:
                aclose = getattr(response, "aclose", None)
                if aclose is not None:  # release the connection when the reader stops early
                    await aclose()
        except Exception as exc:  # every failure becomes a ProviderError the worker understands
            raise self._failed(_provider_error(exc, produced=reading.produced), exc) from exc
        for item in reading.ending():
            yield item

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
        uploaded = await self._active(uploaded, attachment.filename)
        if not uploaded.uri:
            raise ValueError("the Files API returned no uri")
        self._uploads[attachment.id] = (uploaded.uri, now + FILE_REUSE_SECONDS)
        while len(self._uploads) > MAX_REMEMBERED_UPLOADS:
            self._uploads.popitem(last=False)
        return uploaded.uri

    async def _active(self, file: types.File, filename: str) -> types.File:
        """`file` once the Files API has processed it (a video or a large document may take a
        while; the generate call refuses a file that is not ACTIVE): looked at again with
        files.get, sleeping between looks, while it is PROCESSING, for at most
        `file_wait_seconds`. FAILED, or still processing then, ends the reply."""
        deadline = time.monotonic() + self.file_wait_seconds
        delay = self.file_poll_seconds
        while file.state == types.FileState.PROCESSING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProviderError(
                    "attachment_processing_timeout",
                    f"Gemini was still processing {filename} after {self.file_wait_seconds} s",
                    retryable=False,
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, FILE_POLL_MAX_SECONDS)
            file = await self._client.aio.files.get(name=file.name or "")
        if file.state == types.FileState.FAILED:
            reason = file.error.message if file.error is not None else None
            raise ProviderError(
                "attachment_processing_failed",
                f"Gemini could not process {filename}: {reason or 'no reason given'}",
                retryable=False,
            )
        return file


def _config(
    model: str, conversation: Conversation, options: GenerationOptions
) -> types.GenerateContentConfig:
    config = types.GenerateContentConfig(
        system_instruction=conversation.system_prompt or None,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        automatic_continuation=False,
    )
    if options.temperature is not None:
        config.temperature = options.temperature  # None: the model's default
    config.thinking_config = _thinking_config(model, options.thinking)
    if options.grounding:
        config.tools = [types.Tool(google_search=types.GoogleSearch())]
    return config


class _Reading:
    """What a reply's chunks have said so far, and the items that end it."""

    def __init__(self) -> None:
        self.produced = False  # a Delta or Thought was yielded: a failure ends a partial reply
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.grounding: types.GroundingMetadata | None = None
        self.text: list[str] = []  # the reply's text, which grounding offsets point into
        self.usage = Usage()

    def items_of(self, chunk: types.GenerateContentResponse) -> list[StreamItem]:
        if chunk.usage_metadata is not None:
            self.usage = _usage_of(chunk.usage_metadata)
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.block_reason = _enum_name(feedback.block_reason)
        items: list[StreamItem] = []
        for candidate in (chunk.candidates or [])[:1]:
            for item in _items(candidate):
                self.produced = True
                if isinstance(item, Delta):
                    self.text.append(item.text)
                items.append(item)
            if candidate.grounding_metadata is not None:
                self.grounding = candidate.grounding_metadata
            if candidate.finish_reason is not None:
                self.finish_reason = _enum_name(candidate.finish_reason)
        return items

    def ending(self) -> list[StreamItem]:
        if self.block_reason is not None:
            # The prompt itself was refused: there is no candidate at all.
            return [Finished(self.block_reason.lower(), self.usage, blocked=True)]
        if self.finish_reason is None:
            raise ProviderError(
                "provider_stream_error",
                "the stream ended without a finish reason",
                retryable=not self.produced,
            )
        items: list[StreamItem] = []
        grounding, text = self.grounding, "".join(self.text)
        citations = _citations(grounding, text) if grounding is not None else None
        if citations is not None:
            items.append(citations)
        blocked = self.finish_reason in BLOCKING_FINISH_REASONS
        items.append(Finished(self.finish_reason.lower(), self.usage, blocked=blocked))
        return items


def _texts(candidate: types.Candidate) -> list[str]:
    """The candidate's visible text parts (thought summaries are not part of the reply)."""
    content = candidate.content
    if content is None or not content.parts:
        return []
    return [part.text for part in content.parts if part.text and not part.thought]


def _items(candidate: types.Candidate) -> list[Delta | Thought]:
    """The candidate's text parts in order: thought summaries as `Thought`, the rest `Delta`."""
    content = candidate.content
    if content is None or not content.parts:
        return []
    return [
        Thought(part.text) if part.thought else Delta(part.text)
        for part in content.parts
        if part.text
    ]


def _citations(metadata: types.GroundingMetadata, text: str) -> Citations | None:
    """Grounding metadata as `Citations`: the web sources, and the supported segments with
    their offsets turned from UTF-8 bytes into characters of the reply's text. None when the
    model did not search."""
    sources = [_source(chunk) for chunk in metadata.grounding_chunks or []]
    encoded = text.encode()
    segments = []
    for support in metadata.grounding_supports or []:
        segment = support.segment
        if segment is None:
            continue
        start, end = segment.start_index or 0, segment.end_index or 0
        segments.append(
            {
                "start": len(encoded[:start].decode(errors="ignore")),
                "end": len(encoded[:end].decode(errors="ignore")),
                "text": segment.text,
                "source_indexes": list(support.grounding_chunk_indices or []),
            }
        )
    entry = metadata.search_entry_point
    rendered = entry.rendered_content if entry is not None else None
    if not sources and not segments and rendered is None:
        return None
    return Citations(sources, segments, rendered)


def _source(chunk: types.GroundingChunk) -> dict[str, Any]:
    """One source; every chunk is kept, so that a support's indexes still point at it."""
    found = chunk.web or chunk.retrieved_context or chunk.maps
    return {"title": getattr(found, "title", None), "uri": getattr(found, "uri", None)}


def _usage_of(metadata: types.GenerateContentResponseUsageMetadata) -> Usage:
    return Usage(
        prompt_tokens=metadata.prompt_token_count,
        output_tokens=metadata.candidates_token_count,
        thinking_tokens=metadata.thoughts_token_count,
        cached_tokens=metadata.cached_content_token_count,
    )


def _enum_name(value: Any) -> str:
    """`FinishReason.STOP` -> "STOP"; a value the SDK does not know yet passes as its text."""
    raw = getattr(value, "value", value)
    return str(raw).upper()


def _thinking_can_be_off(model: str) -> bool:
    """Gemini 2.5 Flash models accept a thinking budget of 0; Pro and newer models refuse it."""
    return "2.5-flash" in model


# Gemini 2.5 models take a token budget, not a level: the budgets Google maps the OpenAI
# `reasoning_effort` levels to.
LEVEL_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
_GENERATION = re.compile(r"gemini-(\d+)")


def _takes_thinking_level(model: str) -> bool:
    """Gemini 3 and later take `thinking_level`; 2.x (and unknown names) a budget."""
    found = _GENERATION.search(model)
    return found is not None and int(found.group(1)) >= 3


def _thinking_config(model: str, thinking: str | int | None) -> types.ThinkingConfig | None:
    """The room's `thinking` as Gemini's configuration: None keeps the model's default (and no
    thought summaries); "off" is a budget of 0 where the model allows it (elsewhere its lowest
    thinking, without summaries); a level or a budget asks for the summaries too."""
    if thinking is None:
        return None
    if thinking == "off":
        if _thinking_can_be_off(model):
            return types.ThinkingConfig(thinking_budget=0, include_thoughts=False)
        if _takes_thinking_level(model):
            return types.ThinkingConfig(
                thinking_level=types.ThinkingLevel.LOW, include_thoughts=False
            )
        return None
    if isinstance(thinking, int):
        return types.ThinkingConfig(thinking_budget=thinking, include_thoughts=True)
    if thinking not in LEVEL_BUDGETS:
        return None  # validated before it gets here: nothing to ask for
    if _takes_thinking_level(model):
        return types.ThinkingConfig(
            thinking_level=types.ThinkingLevel(thinking.upper()), include_thoughts=True
        )
    return types.ThinkingConfig(thinking_budget=LEVEL_BUDGETS[thinking], include_thoughts=True)


# --- the mapping --------------------------------------------------------------------------------
def _provider_error(exc: Exception, *, produced: bool) -> ProviderError:
    if isinstance(exc, ProviderError):  # our own verdict (an attachment the API cannot use)
        return exc
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
