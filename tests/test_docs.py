"""The docs read from a clean clone: every relative Markdown link resolves inside the repository
(the file, and the heading its anchor names), and none leads out of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / folder / "README.md" for folder in ("tests", "bench", "postman")),
    ]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def _links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for link in _links(doc):
        if re.match(r"[a-z]+:", link):  # https:, mailto:: not ours to check
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if "shared" in Path(target).parts or not path.is_relative_to(ROOT):
            broken.append(f"{link} (outside the repository)")
        elif not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_at_the_shared_folder_outside_the_clone(doc: Path) -> None:
    assert "../shared" not in doc.read_text()


def test_the_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "# gemini-backend"
    assert (lines[2], lines[5]) == ("```bash", "```")
    assert lines[3].startswith("make run     # set up .venv, migrate, start the API")
    assert lines[4].startswith("make test    # set up .venv with dev tools, run the whole suite")
    assert len(lines) <= 220
