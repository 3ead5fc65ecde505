"""Reading the `file` field of a multipart/form-data body as it arrives: the request body goes
through python-multipart's push parser chunk by chunk, and the field's bytes come out as an
async iterator, so an upload is never spooled to disk or held whole in memory."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gemini_backend.attachments.errors import FileRequired, InvalidFilename, MalformedUpload

FIELD = "file"


@dataclass
class FilePart:
    filename: str
    chunks: AsyncIterator[bytes]  # the field's bytes, read from the body as they are pulled


class _Events:
    """The parser's callbacks, as a queue of events: ("headers", {name: value}),
    ("data", bytes), ("end", None)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, Any]] = deque()
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks (a TypedDict)
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.queue.append(("headers", self._headers)),
            "on_part_data": lambda data, start, end: self.queue.append(
                ("data", bytes(data[start:end]))
            ),
            "on_part_end": lambda: self.queue.append(("end", None)),
        }

    def _begin(self) -> None:
        self._headers = {}

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""


async def file_part(content_type: str, body: AsyncIterator[bytes]) -> FilePart:
    """The `file` field of the body (whose other fields are skipped); 400 for a body that is
    not multipart/form-data, 422 when it has no such field."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MalformedUpload()
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())

    async def next_event() -> tuple[str, Any] | None:
        while not events.queue:
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                return None
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise MalformedUpload() from exc
        return events.queue.popleft()

    while (event := await next_event()) is not None:
        if event[0] != "headers":
            continue
        disposition, params = parse_options_header(event[1].get(b"content-disposition", b""))
        if disposition != b"form-data" or params.get(b"name") != FIELD.encode():
            continue
        try:
            filename = params.get(b"filename", b"").decode()
        except UnicodeDecodeError as exc:
            raise InvalidFilename() from exc
        return FilePart(filename, _field_bytes(next_event))
    raise FileRequired()


async def _field_bytes(next_event: Any) -> AsyncIterator[bytes]:
    while (event := await next_event()) is not None:
        kind, data = event
        if kind == "end":
            return
        if kind == "data" and data:
            yield data
    raise MalformedUpload()  # the body ended inside the field
