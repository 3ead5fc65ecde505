"""The vendored browser code is what its VERSIONS file records (no network: `make
vendor-web-check` compares with the packages themselves), each file with its licence."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from gemini_backend.web.router import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = [STATIC_DIR / "vendor", Path(__file__).parent / "vendor"]
FILE_LINE = re.compile(r"^  (\S+) sha256:([0-9a-f]{64})$")
PACKAGE_LINE = re.compile(
    r"^(\S+) (\d+\.\d+\.\d+) .+ npm:\1@\2 https://github\.com/\S+ sha512-\S+$"
)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_vendored_file_matches_its_recorded_digest(folder: Path) -> None:
    lines = [line for line in (folder / "VERSIONS").read_text().splitlines() if line[:1] != "#"]
    recorded = {}
    packages = []
    for line in lines:
        if match := FILE_LINE.match(line):
            recorded[match[1]] = match[2]
        else:
            assert PACKAGE_LINE.match(line), line
            packages.append(line.split()[0])
    assert packages
    on_disk = {p.name for p in folder.iterdir() if p.name != "VERSIONS"}
    assert on_disk == set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    for package in packages:
        assert any(name.startswith("LICENSE") and name.endswith(package) for name in on_disk)


def test_the_page_code_needs_no_eval() -> None:
    for path in STATIC_DIR.rglob("*.js"):
        text = path.read_text()
        assert re.search(r"\beval\(|new Function\(", text) is None, path
