"""A small Gemini API server on loopback for tests: `POST /v1beta/models/{model}:generateContent`
and `:streamGenerateContent?alt=sse`, plain HTTP, the real JSON shapes (camelCase
`GenerateContentResponse`, `usageMetadata` on every chunk, `promptFeedback`, Google's error body
with `google.rpc` details such as `QuotaFailure` and `RetryInfo`).

It is a `LoopbackServer` (tests/ai/fake_server.py): uvicorn on a free 127.0.0.1 port, every
request recorded, scripted per test with `fake.script(...)` for the streaming calls (the
replies) and `fake.script_plain(...)` for the others (the titles). Requests without the
expected API key get the real "API key not valid" 400.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.ai.fake_server import Hang, LoopbackServer, cut_short, read_body

API_KEY = "test-key"
API_VERSION = "v1beta"


# --- behaviours ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A `GenerateContentResponse`. Streamed: one SSE event per item of `chunks` (after one
    event per item of `thoughts`, as thought parts), the last carrying `finish_reason`.

    `block_reason` answers with `promptFeedback.blockReason` and no candidates (a blocked
    prompt). `break_after` drops the connection after the chunks; `stall_after` sends nothing
    more until the client gives up; `error_event` sends an in-stream `{"error": ...}` after them;
    `finish_reason=None` ends the stream cleanly without one. `grounding` is the candidate's
    `groundingMetadata` (camelCase JSON, see `search_grounding`), sent with the last chunk;
    `cached_tokens` is `usageMetadata.cachedContentTokenCount`."""

    chunks: Sequence[str] = ("Hello", " from", " Gemini.")
    finish_reason: str | None = "STOP"
    thoughts: Sequence[str] = ()
    prompt_tokens: int = 12
    output_tokens: int = 7
    thoughts_tokens: int | None = None
    cached_tokens: int | None = None
    grounding: Mapping[str, Any] | None = None
    block_reason: str | None = None
    break_after: bool = False
    stall_after: bool = False
    error_event: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Fail:
    """An error response with Google's error body (`{"error": {code, message, status,
    details}}`)."""

    status: int
    message: str = "An internal error has occurred. Please retry or report it."
    grpc_status: str = "INTERNAL"
    details: Sequence[Mapping[str, Any]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Reply | Fail | Hang

_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }
    ],
}


def _quota_failure(quota_id: str, value: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": _QUOTA_METRIC,
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": value,
            }
        ],
    }


def rate_limited(retry_delay: str | None = "0.05s", **headers: str) -> Fail:
    """The per-minute free-tier limit, as Gemini words it (with a `RetryInfo`)."""
    details: list[Mapping[str, Any]] = [
        _quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10"),
        _HELP,
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    return Fail(
        429,
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits.",
        "RESOURCE_EXHAUSTED",
        details,
        headers,
    )


def daily_quota_exhausted() -> Fail:
    """The per-day quota: Gemini still adds a `RetryInfo`, but waiting seconds cannot help."""
    return Fail(
        429,
        "You exceeded your current quota, please check your plan and billing details. "
        "* Quota exceeded for metric: "
        f"{_QUOTA_METRIC}, limit: 250",
        "RESOURCE_EXHAUSTED",
        [
            _quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250"),
            _HELP,
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"},
        ],
    )


def server_error(status: int = 500) -> Fail:
    if status == 503:
        return Fail(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")
    return Fail(status)


def bad_request(
    message: str = "* GenerateContentRequest.contents: contents is not specified",
) -> Fail:
    return Fail(400, message, "INVALID_ARGUMENT")


def invalid_api_key() -> Fail:
    return Fail(
        400,
        "API key not valid. Please pass a valid API key.",
        "INVALID_ARGUMENT",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )


def permission_denied() -> Fail:
    return Fail(403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED")


def model_not_found(model: str = "gemini-0-nonexistent") -> Fail:
    return Fail(
        404,
        f"models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent.",
        "NOT_FOUND",
    )


def prompt_blocked(reason: str = "SAFETY") -> Reply:
    return Reply(chunks=(), finish_reason=None, block_reason=reason, output_tokens=0)


def safety_stop(chunks: Sequence[str] = ()) -> Reply:
    return Reply(chunks=chunks, finish_reason="SAFETY", output_tokens=len(chunks))


def search_grounding(text: str, statement: str) -> dict[str, Any]:
    """Google Search grounding as Gemini sends it: two web sources, one support for the
    `statement` found in `text` (its offsets in UTF-8 bytes), the search entry point's HTML."""
    start = len(text[: text.index(statement)].encode())
    return {
        "searchEntryPoint": {"renderedContent": '<div class="container">Lisbon weather</div>'},
        "groundingChunks": [
            {"web": {"uri": "https://vertexaisearch.example/1", "title": "ipma.pt"}},
            {"web": {"uri": "https://vertexaisearch.example/2", "title": "visitlisboa.com"}},
        ],
        "groundingSupports": [
            {
                "segment": {
                    "startIndex": start,
                    "endIndex": start + len(statement.encode()),
                    "text": statement,
                },
                "groundingChunkIndices": [0, 1],
                "confidenceScores": [0.9, 0.7],
            }
        ],
        "webSearchQueries": ["lisbon weather may"],
    }


def internal_error_event() -> dict[str, Any]:
    return {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}


# --- the recording ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any

    @property
    def stream(self) -> bool:
        return self.path.endswith(":streamGenerateContent")

    @property
    def model(self) -> str:
        return self.path.rsplit("/", 1)[-1].split(":", 1)[0]

    @property
    def contents(self) -> list[dict[str, Any]]:
        contents = self.body.get("contents") if isinstance(self.body, dict) else None
        return contents if isinstance(contents, list) else []

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(role, text) of every content, the texts of its parts joined."""
        return [
            (c.get("role", ""), "".join(p.get("text", "") for p in c.get("parts", [])))
            for c in self.contents
        ]

    @property
    def system_instruction(self) -> str | None:
        system = self.body.get("systemInstruction") if isinstance(self.body, dict) else None
        if not isinstance(system, dict):
            return None
        return "".join(p.get("text", "") for p in system.get("parts", []))

    @property
    def generation_config(self) -> dict[str, Any]:
        """`generationConfig` with its keys in lowerCamelCase, as the server reads them (proto
        JSON accepts both spellings, and the SDK sends nested configs in snake_case)."""
        config = self.body.get("generationConfig") if isinstance(self.body, dict) else None
        return _camel_keys(config) if isinstance(config, dict) else {}

    @property
    def tools(self) -> list[Any]:
        """`tools`, keys in lowerCamelCase."""
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return _camel_keys(tools) if isinstance(tools, list) else []


@dataclass
class Upload:
    """A file uploaded through the fake Files API (the resumable protocol the SDK speaks)."""

    name: str  # files/<id>
    uri: str
    mime_type: str
    display_name: str | None
    declared_size: int
    data: bytes = b""
    finalized: bool = False
    # The Files API's processing: "PROCESSING" for `polls_left` more files.get calls after the
    # upload, then `ends_as` ("ACTIVE" or "FAILED").
    state: str = "ACTIVE"
    polls_left: int = 0
    ends_as: str = "ACTIVE"
    gets: int = 0

    def resource(self) -> dict[str, Any]:
        file: dict[str, Any] = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "uri": self.uri,
            "state": self.state,
            "source": "UPLOADED",
        }
        if self.state == "FAILED":
            file["error"] = {"code": 3, "message": "The file could not be processed."}
        return file


def inline_parts(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The content's inline data parts as sent: {"mimeType", "data" (base64)}."""
    parts = [_camel_keys(p) for p in content.get("parts", [])]
    return [p["inlineData"] for p in parts if "inlineData" in p]


def inline_files(content: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(media type, bytes) of each inline data part, its base64 decoded (proto JSON's bytes:
    the standard or the URL-safe alphabet, as the SDK writes them)."""
    return [(p["mimeType"], _bytes_of(p["data"])) for p in inline_parts(content)]


def _bytes_of(data: str) -> bytes:
    alphabet = "-_" if "-" in data or "_" in data else "+/"
    return base64.b64decode(data, altchars=alphabet.encode(), validate=True)


def file_parts(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The content's Files API references: {"mimeType", "fileUri"} (keys in camelCase)."""
    parts = [_camel_keys(p) for p in content.get("parts", [])]
    return [p["fileData"] for p in parts if "fileData" in p]


# --- the server ---------------------------------------------------------------------------------
class FakeGemini(LoopbackServer[Reply | Fail, Recorded]):
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.uploads: list[Upload] = []
        # Set by a test: the next uploads are PROCESSING for this many files.get calls, then
        # end as `processing_ends_as`.
        self.processing_polls = 0
        self.processing_ends_as = "ACTIVE"
        super().__init__(
            "Gemini",
            [
                Route(f"/{API_VERSION}/models/{{call:path}}", self._models, methods=["POST"]),
                Route(f"/upload/{API_VERSION}/files", self._upload, methods=["POST"]),
                Route(f"/{API_VERSION}/files/{{file_id}}", self._get_file, methods=["GET"]),
            ],
            streamed=Reply(),
            plain=Reply(chunks=['"Trip Ideas For Paris."']),
        )

    def _refused_part(self, contents: list[dict[str, Any]]) -> str | None:
        """What the real API refuses in a part: inline data that is not base64 with a media
        type, a file reference to no (finished) upload or with another media type."""
        known = {u.uri: u for u in self.uploads if u.finalized}
        for content in contents:
            for inline in inline_parts(content):
                try:
                    _bytes_of(inline["data"])
                except (KeyError, ValueError):
                    return "inline data must be base64"
                if not inline.get("mimeType"):
                    return "inline data needs a mimeType"
            for ref in file_parts(content):
                upload = known.get(ref.get("fileUri", ""))
                if upload is None:
                    return f"File {ref.get('fileUri')} does not exist or is not yours."
                if ref.get("mimeType") != upload.mime_type:
                    return "the file part's mimeType is not the file's"
                if upload.state != "ACTIVE":
                    return f"The File {upload.name} is not in an ACTIVE state."
        return None

    async def _get_file(self, request: Request) -> Response:
        """files.get: the file's resource; one PROCESSING look fewer left."""
        if request.headers.get("x-goog-api-key") != self.api_key:
            return _error(invalid_api_key())
        name = f"files/{request.path_params['file_id']}"
        upload = next((u for u in self.uploads if u.name == name and u.finalized), None)
        if upload is None:
            return _error(Fail(403, f"File {name} does not exist.", "PERMISSION_DENIED"))
        upload.gets += 1
        if upload.state == "PROCESSING":
            if upload.polls_left > 0:
                upload.polls_left -= 1
            else:
                upload.state = upload.ends_as
        return JSONResponse(upload.resource())

    # --- the Files API: start a resumable upload, then its chunks (the last one finalizes) ----
    async def _upload(self, request: Request) -> Response:
        command = request.headers.get("x-goog-upload-command", "")
        upload_id = request.query_params.get("upload_id")
        if upload_id is None:  # the start needs the key; the upload URL is its own credential
            if request.headers.get("x-goog-api-key") != self.api_key:
                return _error(invalid_api_key())
            body = await read_body(request)
            if (
                command != "start"
                or request.headers.get("x-goog-upload-protocol") != "resumable"
                or not isinstance(body, dict)
            ):
                return _error(bad_request("start a resumable upload first"))
            # Proto JSON: the SDK writes snake_case keys, the API reads both spellings.
            meta = _camel_keys(body.get("file", {}))
            file_id = uuid.uuid4().hex[:12]
            self.uploads.append(
                Upload(
                    name=f"files/{file_id}",
                    uri=f"{self.url}/{API_VERSION}/files/{file_id}",
                    mime_type=str(meta.get("mimeType", "")),
                    display_name=meta.get("displayName"),
                    declared_size=int(meta.get("sizeBytes", 0)),
                )
            )
            url = f"{self.url}/upload/{API_VERSION}/files?upload_id={file_id}"
            return JSONResponse({}, headers={"X-Goog-Upload-URL": url})
        upload = next((u for u in self.uploads if u.name == f"files/{upload_id}"), None)
        if upload is None or upload.finalized:
            return _error(Fail(404, "No such upload.", "NOT_FOUND"))
        if int(request.headers.get("x-goog-upload-offset", "-1")) != len(upload.data):
            return _error(bad_request("wrong upload offset"))
        upload.data += await request.body()
        if "finalize" not in command:
            return JSONResponse({}, headers={"X-Goog-Upload-Status": "active"})
        upload.finalized = True
        if len(upload.data) != upload.declared_size:
            return _error(bad_request("the upload's size is not the one declared"))
        if self.processing_polls or self.processing_ends_as != "ACTIVE":
            upload.state = "PROCESSING"
            upload.polls_left = self.processing_polls
            upload.ends_as = self.processing_ends_as
        return JSONResponse({"file": upload.resource()}, headers={"X-Goog-Upload-Status": "final"})

    # what was asked, under the names the tests use
    streams = LoopbackServer.streamed_requests
    plain_calls = LoopbackServer.plain_requests

    # --- the endpoint ---------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        body = await read_body(request)
        call: str = request.path_params["call"]
        self.requests.append(
            Recorded(
                request.method,
                request.url.path,
                dict(request.query_params),
                dict(request.headers),
                body,
            )
        )
        model, _, method = call.partition(":")
        if method not in {"generateContent", "streamGenerateContent"}:
            return _error(Fail(404, f"Method {method!r} not found.", "NOT_FOUND"))
        if request.headers.get("x-goog-api-key") != self.api_key:
            return _error(invalid_api_key())
        stream = method == "streamGenerateContent"
        if stream and request.query_params.get("alt") != "sse":
            return _error(bad_request("this fake streams only with alt=sse"))
        if not isinstance(body, dict) or not body.get("contents"):
            return _error(bad_request())
        refused = self._refused_part(body["contents"])
        if refused is not None:
            return _error(bad_request(refused))
        behaviour = await self._next(request, stream)
        if behaviour is None:  # after a Hang
            return Response(status_code=503)
        if isinstance(behaviour, Fail):
            return _error(behaviour)
        if not stream:
            return JSONResponse(_whole(behaviour, model))
        return StreamingResponse(
            self._events(behaviour, model, request), media_type="text/event-stream"
        )

    async def _events(self, reply: Reply, model: str, request: Request) -> AsyncIterator[str]:
        response_id = uuid.uuid4().hex[:22]

        def event(
            parts: list[dict[str, Any]] | None,
            finish_reason: str | None = None,
            *,
            final: bool = False,
        ) -> str:
            payload: dict[str, Any] = {}
            if parts is not None or finish_reason is not None:
                payload["candidates"] = [_candidate(reply, parts, finish_reason, final=final)]
            payload["usageMetadata"] = _usage(reply, final=final)
            payload["modelVersion"] = model
            payload["responseId"] = response_id
            return _sse(payload)

        if reply.block_reason is not None:
            yield _sse(
                {
                    "promptFeedback": {
                        "blockReason": reply.block_reason,
                        "safetyRatings": _blocking_ratings(),
                    },
                    "usageMetadata": _usage(reply, final=True),
                    "modelVersion": model,
                    "responseId": response_id,
                }
            )
            return
        for thought in reply.thoughts:
            yield event([{"text": thought, "thought": True}])
        chunks = list(reply.chunks)
        ends_here = not cut_short(reply)
        for index, text in enumerate(chunks):
            last = ends_here and index == len(chunks) - 1
            yield event([{"text": text}], reply.finish_reason if last else None, final=last)
        if not ends_here:
            async for line in self._cut_off(reply, request, _sse):
                yield line
            return
        if not chunks and reply.finish_reason is not None:
            yield event(None, reply.finish_reason, final=True)


def _candidate(
    reply: Reply, parts: list[dict[str, Any]] | None, finish_reason: str | None, *, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
        if finish_reason == "SAFETY":
            candidate["safetyRatings"] = _blocking_ratings()
    if final and reply.grounding is not None:
        candidate["groundingMetadata"] = dict(reply.grounding)
    return candidate


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), str(k)): _camel_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def _sse(payload: Mapping[str, Any]) -> str:
    # The real API separates events with CRLF pairs.
    return f"data: {json.dumps(payload)}\r\n\r\n"


def _blocking_ratings() -> list[dict[str, Any]]:
    return [
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    ]


def _usage(reply: Reply, *, final: bool) -> dict[str, Any]:
    """Gemini sends the running usage with every chunk; the output counts come at the end."""
    usage: dict[str, Any] = {
        "promptTokenCount": reply.prompt_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}],
    }
    total = reply.prompt_tokens
    if reply.cached_tokens is not None:
        usage["cachedContentTokenCount"] = reply.cached_tokens
    if final:
        if reply.output_tokens:
            usage["candidatesTokenCount"] = reply.output_tokens
            total += reply.output_tokens
        if reply.thoughts_tokens is not None:
            usage["thoughtsTokenCount"] = reply.thoughts_tokens
            total += reply.thoughts_tokens
    usage["totalTokenCount"] = total
    return usage


def _whole(reply: Reply, model: str) -> dict[str, Any]:
    if reply.block_reason is not None:
        return {
            "promptFeedback": {
                "blockReason": reply.block_reason,
                "safetyRatings": _blocking_ratings(),
            },
            "usageMetadata": _usage(reply, final=True),
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }
    parts = [{"text": t, "thought": True} for t in reply.thoughts]
    parts += [{"text": "".join(reply.chunks)}] if reply.chunks else []
    candidate: dict[str, Any] = {"index": 0}
    if parts:
        candidate["content"] = {"parts": parts, "role": "model"}
    if reply.finish_reason is not None:
        candidate["finishReason"] = reply.finish_reason
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(reply, final=True),
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def _error(fail: Fail) -> JSONResponse:
    error: dict[str, Any] = {
        "code": fail.status,
        "message": fail.message,
        "status": fail.grpc_status,
    }
    if fail.details:
        error["details"] = [dict(d) for d in fail.details]
    return JSONResponse({"error": error}, status_code=fail.status, headers=dict(fail.headers))
