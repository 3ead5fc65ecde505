"""The snippets' marks. The highlighters (ts_headline, FTS5's snippet()) put two private-use
characters around each match; they are removed from the text before it is highlighted, so
every one left in a snippet is a mark. Everything else is HTML-escaped, then they become
`<mark>` and `</mark>`."""

from __future__ import annotations

import html

MARK_START = "\ue000"
MARK_END = "\ue001"


def _marks(escaped: str) -> str:
    return escaped.replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


def from_raw(snippet: str) -> str:
    """A snippet of the text as stored."""
    return _marks(html.escape(snippet, quote=True))


def from_markup_escaped(snippet: str) -> str:
    """A snippet of the text with `&`, `<` and `>` already escaped (PostgreSQL's: its parser
    would otherwise take tags for tags and leave them out): the quotes are left to escape."""
    return _marks(snippet.replace('"', "&quot;").replace("'", "&#x27;"))
