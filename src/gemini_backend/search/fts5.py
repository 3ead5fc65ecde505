"""A user's search text as an FTS5 query, in the spirit of PostgreSQL's websearch_to_tsquery:
words and "quoted phrases" must all be there, `or` between them offers alternatives, `-word`
leaves out what has it. Every term is written as an FTS5 string (quoted, `"` doubled), so
nothing the user types is FTS5 syntax: `"`, `NEAR(`, `*`, `^`, `AND`, `col:` are text to find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A quoted phrase (its closing quote optional, as websearch_to_tsquery allows), or a word.
_ITEM = re.compile(r'(-?)"([^"]*)"?|(\S+)')


@dataclass(frozen=True, slots=True)
class Fts5Query:
    match: str
    # Every wanted word as one phrase, when there are several and no `or`: its hits rank first.
    phrase: str | None


def _string(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _has_token(term: str) -> bool:
    # unicode61 makes tokens of letters and digits only; anything else separates them.
    return any(ch.isalnum() for ch in term)


@dataclass
class _Group:
    wanted: list[str]
    unwanted: list[str]

    def render(self) -> str | None:
        if not self.wanted:
            return None  # FTS5 cannot ask for "everything without X"
        query = " ".join(_string(term) for term in self.wanted)
        if self.unwanted:
            query = f"({query}) NOT ({' OR '.join(_string(term) for term in self.unwanted)})"
        return query


def _items(text: str) -> list[tuple[bool, str, bool]]:
    """(negated, term, is the word `or`) of each word or phrase."""
    items = []
    for match in _ITEM.finditer(text):
        negated, phrase, word = match.group(1), match.group(2), match.group(3)
        if word is None:
            items.append((bool(negated), phrase, False))
        elif word.startswith("-"):
            items.append((True, word[1:], False))
        else:
            items.append((False, word, word.lower() == "or"))
    return items


def _groups(text: str) -> list[_Group]:
    # `or` separates alternatives only between two terms; elsewhere it is a word to find.
    items = _items(text)
    groups = [_Group([], [])]
    for index, (negated, term, is_or) in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        current = groups[-1]
        if is_or and (current.wanted or current.unwanted) and following and not following[2]:
            groups.append(_Group([], []))
        elif _has_token(term):
            (current.unwanted if negated else current.wanted).append(term)
    return groups


def to_fts5(text: str) -> Fts5Query | None:
    """The FTS5 query of `text`, or None when nothing in it can match anything."""
    groups = _groups(text)
    rendered = [query for query in (group.render() for group in groups) if query]
    if not rendered:
        return None
    match = rendered[0] if len(rendered) == 1 else " OR ".join(f"({q})" for q in rendered)
    wanted = groups[0].wanted
    words = sum(len(re.findall(r"\w+", term)) for term in wanted)
    phrase = _string(" ".join(wanted)) if len(groups) == 1 and words > 1 else None
    return Fts5Query(match, phrase)
