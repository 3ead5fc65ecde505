"""Chatroom titles from a model: the request every provider makes, and cleaning its answer."""

from __future__ import annotations

import re

TITLE_MAX_CHARS = 60
TITLE_FALLBACK_WORDS = 6
TITLE_INPUT_CHARS = 2000
TITLE_MAX_TOKENS = 24
TITLE_INSTRUCTION = (
    "Write a short title of 2 to 6 words for a chat that starts with the user's message below. "
    "Reply with the title only: no quotes, no punctuation at the end, no explanation."
)
DEFAULT_TITLE = "New chat"

_TITLE_PREFIX = re.compile(r"^\s*(title)\s*:\s*", re.IGNORECASE)
# Quotes (straight, curly, guillemets), markdown marks, end punctuation and dashes.
_TITLE_TRIM = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb*_#.,;:!?-\u2013\u2014 \t"


def clean_title(text: str) -> str:
    """The model's title without quotes, a "Title:" prefix or end punctuation, <= 60 chars."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    title = _TITLE_PREFIX.sub("", lines[0])
    title = " ".join(title.split()).strip(_TITLE_TRIM)
    return _cut(title)


def fallback_title(first_message: str) -> str:
    """The first words of the message, when the model gave no usable title."""
    words = first_message.split()[:TITLE_FALLBACK_WORDS]
    return _cut(" ".join(words)) or DEFAULT_TITLE


def _cut(title: str) -> str:
    if len(title) <= TITLE_MAX_CHARS:
        return title
    cut = title[:TITLE_MAX_CHARS]
    if " " in cut and not title[TITLE_MAX_CHARS].isspace():
        cut = cut.rsplit(" ", 1)[0]  # do not end on half a word
    return cut.strip(_TITLE_TRIM)
