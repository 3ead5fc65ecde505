"""What a file is, read from its bytes (never from the client's word): the image types and PDF
by their signatures, text by being valid UTF-8 without control characters (then Markdown or CSV
by the file name's extension, text/plain otherwise)."""

from __future__ import annotations

import codecs
import unicodedata

from gemini_backend.attachments.errors import InvalidFilename, UnsupportedAttachmentType

SNIFF_BYTES = 4096
MAX_FILENAME = 255
# The brands of the ISO base media file format (an `ftyp` box at offset 4) that are HEIF images.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})
_TEXT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv"}
# Every media type an attachment can have (what `sniff` returns).
MEDIA_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/heic",
    "image/heif",
    "application/pdf",
    "text/plain",
    *sorted(set(_TEXT_TYPES.values())),
)
# Text may hold these control characters (tab, newlines, form feed); no other.
_TEXT_CONTROLS = frozenset("\t\n\r\f")


def binary_type(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        if brand in _HEIF_BRANDS:
            return "image/heif"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def sniff(head: bytes, filename: str) -> str:
    """The media type of a file that starts with `head` (at most SNIFF_BYTES of it), or 415."""
    found = binary_type(head)
    if found is not None:
        return found
    TextCheck().feed(head)  # 415 if it is not text
    suffix = filename[filename.rfind(".") :].lower() if "." in filename else ""
    return _TEXT_TYPES.get(suffix, "text/plain")


class TextCheck:
    """Checks a text file chunk by chunk (a character may straddle two chunks)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise UnsupportedAttachmentType() from exc
        if any((char < " " and char not in _TEXT_CONTROLS) or char == "\x7f" for char in text):
            raise UnsupportedAttachmentType()


def is_text(media_type: str) -> bool:
    return media_type.startswith("text/")


def checked_filename(raw: str) -> str:
    """The client's file name as stored: no path, no control characters, or 422."""
    name = raw.strip()
    if (
        not name
        or len(name) > MAX_FILENAME
        or name in {".", ".."}
        or any(char in "/\\" or unicodedata.category(char) in {"Cc", "Cf"} for char in name)
    ):
        raise InvalidFilename()
    return name
