"""Fail when domain code asks which mode it runs in (`make lint`): the implementation of each
seam (PostgreSQL or SQLite statements, Redis or in-process broker, caches and streams) is
chosen once, in services.py, and handed to the domain code.

Run as `python scripts/check_modes.py`; prints each offending line and exits 1."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "gemini_backend"
PACKAGES = ("auth", "billing", "chat", "quota", "search", "users", "worker")
MODE_TESTS = re.compile(
    r"dialect\.name"  # which database
    r"|dialect\s*=="
    r"|isinstance\([^)]*broker"  # which queue
    r"|\b_?redis\s+is\s+(not\s+)?None"  # whether Redis is there
    r"|\bif\b.*\bon_redis\b"
    r"|is_production_mode",
    re.IGNORECASE,
)


def offences() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if MODE_TESTS.search(code):
                    found.append(f"{path.relative_to(ROOT.parent.parent)}:{number}: {line.strip()}")
    return found


def main() -> int:
    found = offences()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} mode test(s) in domain code: choose the implementation in services.py")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
