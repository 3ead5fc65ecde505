"""Any OpenAI-compatible chat server (OpenAI, Groq, Ollama, vLLM, llama.cpp, ...) through the
official `openai` SDK: `POST {base_url}/chat/completions` with streaming.

The SDK's own retries are off (`max_retries=0`): the worker's retry policy is the only one, so
every failure is turned into a `ProviderError` whose `retryable` flag and `retry_after` drive it.
The API key is handed to the SDK and never kept on this object or written to a log line.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import openai
import structlog
from openai import AsyncOpenAI
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
)
from openai.types.completion_usage import CompletionUsage
from openai.types.shared import ReasoningEffort

from gemini_backend.ai.base import (
    Conversation,
    Delta,
    Finished,
    GenerationOptions,
    ProviderError,
    StreamItem,
    Thought,
    Turn,
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

# OpenAI names the reasons its own way; the service uses the Gemini-style names.
FINISH_REASONS = {"stop": "stop", "length": "max_tokens", "content_filter": "safety"}
# Signs, in an error's code, type or message, that an account's quota (not a per-minute rate)
# is spent: retrying soon cannot help.
_QUOTA_MARKERS = (
    "insufficient_quota",
    "quota_exceeded",
    "billing_hard_limit",
    "exceeded your current quota",
    "per day",
)


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_seconds: float,
    ) -> None:
        self.model = model
        self.base_url = base_url
        # Local servers (Ollama, vLLM, llama.cpp) take no key, but the SDK insists on one.
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout_seconds,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    async def aclose(self) -> None:
        await self._client.close()

    # --- the reply ------------------------------------------------------------------------------
    async def stream(
        self, conversation: Conversation, options: GenerationOptions
    ) -> AsyncGenerator[StreamItem, None]:
        produced = False  # a Delta or Thought has been yielded: a failure ends a partial reply
        finish_reason: str | None = None
        usage = Usage()
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=await self._messages(conversation),
                stream=True,
                stream_options={"include_usage": True},
                reasoning_effort=_reasoning_effort(options.thinking),
                **_sampling(options),
            )
            async with response:
                async for chunk in response:
                    found = _usage_of(chunk)
                    if found is not None:
                        usage = found
                    # Servers differ in what they leave out of a chunk: read it defensively.
                    for choice in getattr(chunk, "choices", None) or []:
                        if getattr(choice, "index", 0) != 0:
                            continue
                        delta = getattr(choice, "delta", None)
                        thought = _reasoning_of(delta) if options.thinking != "off" else None
                        if thought:
                            produced = True
                            yield Thought(thought)
                        text = getattr(delta, "content", None)
                        if text:
                            produced = True
                            yield Delta(text)
                        reason = getattr(choice, "finish_reason", None)
                        if reason:
                            finish_reason = reason
        except openai.OpenAIError as exc:
            raise self._failed(_provider_error(exc, produced=produced), exc) from exc
        except ValueError as exc:  # a chunk that is not JSON, or not a chat completion chunk
            error = ProviderError(
                "provider_stream_error",
                "unreadable stream from the provider",
                retryable=not produced,
            )
            raise self._failed(error, exc) from exc
        if finish_reason is None:
            error = ProviderError(
                "provider_stream_error",
                "the stream ended without a finish reason",
                retryable=not produced,
            )
            raise self._failed(error, None)
        yield Finished(
            FINISH_REASONS.get(finish_reason, finish_reason),
            usage,
            blocked=finish_reason == "content_filter",
        )

    def _failed(self, error: ProviderError, exc: BaseException | None) -> ProviderError:
        """Log a failed call (with the server's words, the key scrubbed out) and return it."""
        words = str(getattr(exc, "message", None) or exc) if exc is not None else str(error)
        detail = self._scrub(words)[:500]
        log.warning(
            "provider_call_failed",
            provider=self.name,
            model=self.model,
            code=error.code,
            retryable=error.retryable,
            retry_after=error.retry_after,
            error=_describe(exc) if exc is not None else None,
            detail=detail,
        )
        return error

    def _scrub(self, text: str) -> str:
        key = self._client.api_key
        return text.replace(key, "[redacted]") if key and len(key) >= 4 else text

    @staticmethod
    async def _messages(conversation: Conversation) -> list[ChatCompletionMessageParam]:
        messages: list[ChatCompletionMessageParam] = []
        if conversation.system_prompt:
            messages.append({"role": "system", "content": conversation.system_prompt})
        for turn in conversation.turns:
            if turn.role == "user" and turn.attachments:
                messages.append({"role": "user", "content": await _content_parts(turn)})
            elif turn.role == "user":
                messages.append({"role": "user", "content": turn.text})
            else:
                messages.append({"role": "assistant", "content": turn.text})
        return messages

    # --- the title ------------------------------------------------------------------------------
    async def title(self, first_message: str) -> str:
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": TITLE_INSTRUCTION},
                    {"role": "user", "content": first_message[:TITLE_INPUT_CHARS]},
                ],
                max_tokens=TITLE_MAX_TOKENS,
            )
            text = completion.choices[0].message.content if completion.choices else None
            title = clean_title(text or "")
        except Exception as exc:  # a title is a nicety: any failure falls back
            log.warning("title_fallback", provider=self.name, error=_describe(exc))
            title = ""
        return title or fallback_title(first_message)


# --- the mapping --------------------------------------------------------------------------------
def _sampling(options: GenerationOptions) -> dict[str, Any]:
    """The room's temperature, sent only when set (the server's default otherwise)."""
    return {} if options.temperature is None else {"temperature": options.temperature}


def _reasoning_effort(thinking: str | int | None) -> ReasoningEffort | openai.Omit:
    """A thinking level as OpenAI's `reasoning_effort`; anything else is not sent (a budget
    has no OpenAI equivalent, and "off" is not a value every server takes)."""
    if thinking in ("low", "medium", "high"):
        return thinking  # type: ignore[return-value]
    return openai.omit


def _reasoning_of(delta: Any) -> str | None:
    """The reasoning text some servers stream beside the content: `reasoning_content`
    (DeepSeek, vLLM, llama.cpp) or `reasoning` (newer vLLM, Ollama, OpenRouter)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(delta, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def _usage_of(chunk: ChatCompletionChunk) -> Usage | None:
    usage: CompletionUsage | None = chunk.usage
    if usage is None:
        # Groq's older streams put the usage in an `x_groq` extension of the last chunk.
        extra = (chunk.model_extra or {}).get("x_groq")
        raw = extra.get("usage") if isinstance(extra, Mapping) else None
        if not isinstance(raw, Mapping):
            return None
        details = raw.get("completion_tokens_details")
        prompt_details = raw.get("prompt_tokens_details")
        return Usage(
            prompt_tokens=_int_or_none(raw.get("prompt_tokens")),
            output_tokens=_int_or_none(raw.get("completion_tokens")),
            thinking_tokens=_int_or_none(
                details.get("reasoning_tokens") if isinstance(details, Mapping) else None
            ),
            cached_tokens=_int_or_none(
                prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else None
            ),
        )
    details = usage.completion_tokens_details
    prompt = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        thinking_tokens=details.reasoning_tokens if details is not None else None,
        cached_tokens=prompt.cached_tokens if prompt is not None else None,
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _provider_error(exc: openai.OpenAIError, *, produced: bool) -> ProviderError:
    message = _describe(exc)
    if isinstance(exc, openai.APITimeoutError):
        # A stall is a timeout wherever it happens, as the worker's own per-chunk timeout says.
        return ProviderError("provider_timeout", message, retryable=not produced)
    if produced:
        # The client may already show the partial text: the reply fails with what it has.
        return ProviderError("provider_stream_error", message, retryable=False)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("provider_unavailable", message, retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc, message)
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: its body says what it is, when it says anything.
        if _quota_exhausted(exc):
            return ProviderError("provider_quota_exhausted", message, retryable=False)
        kind = f"{exc.code or ''} {exc.type or ''}".lower()
        if "rate_limit" in kind:
            return ProviderError("provider_rate_limited", message, retryable=True)
        if "invalid_request" in kind:
            return ProviderError("provider_bad_request", message, retryable=False)
        return ProviderError("provider_stream_error", message, retryable=True)
    return ProviderError("provider_error", message, retryable=False)


def _status_error(exc: openai.APIStatusError, message: str) -> ProviderError:
    status = exc.status_code
    if status == 429:
        if _quota_exhausted(exc):
            return ProviderError("provider_quota_exhausted", message, retryable=False)
        retry_after = retry_after_seconds(exc.response.headers)
        retryable = retry_after is None or retry_after <= MAX_RETRY_AFTER_SECONDS
        return ProviderError(
            "provider_rate_limited", message, retryable=retryable, retry_after=retry_after
        )
    if status in (408, 409) or status >= 500:
        retry_after = retry_after_seconds(exc.response.headers)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
            retry_after = None
        return ProviderError(
            "provider_unavailable", message, retryable=True, retry_after=retry_after
        )
    if status in (401, 403):
        return ProviderError("provider_auth", message, retryable=False)
    if status == 404:
        return ProviderError("provider_not_found", message, retryable=False)
    if status == 402:
        return ProviderError("provider_quota_exhausted", message, retryable=False)
    if 400 <= status < 500:
        return ProviderError("provider_bad_request", message, retryable=False)
    return ProviderError("provider_unavailable", message, retryable=True)


def _quota_exhausted(exc: openai.APIError) -> bool:
    parts = [exc.code or "", exc.type or "", exc.message or ""]
    body = exc.body
    if isinstance(body, Mapping):
        parts.append(json.dumps(body, default=str))
    elif isinstance(body, str):
        parts.append(body)
    text = " ".join(parts).lower()
    return any(marker in text for marker in _QUOTA_MARKERS)


def _describe(exc: BaseException) -> str:
    """A log-safe description: the error's class and status, never a header or the key."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "code", None)
    parts = [type(exc).__name__]
    if isinstance(status, int):
        parts.append(str(status))
    if isinstance(code, str) and code:
        parts.append(code)
    return " ".join(parts)


async def _content_parts(turn: Turn) -> list[ChatCompletionContentPartParam]:
    """A user turn with files as content parts: its text, then each file: an image as an
    `image_url` part (a data URL), a text file as a text part (named), a PDF as a `file` part
    (a data URL in `file_data`, which servers without PDF input refuse)."""
    parts: list[ChatCompletionContentPartParam] = []
    if turn.text:
        parts.append({"type": "text", "text": turn.text})
    for attachment in turn.attachments:
        data = await attachment.read()
        url = f"data:{attachment.media_type};base64,{base64.b64encode(data).decode()}"
        if attachment.media_type.startswith("image/"):
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif attachment.media_type.startswith("text/"):
            text = data.decode("utf-8", errors="replace")
            parts.append({"type": "text", "text": f"[{attachment.filename}]\n{text}"})
        else:
            parts.append(
                {"type": "file", "file": {"filename": attachment.filename, "file_data": url}}
            )
    return parts
