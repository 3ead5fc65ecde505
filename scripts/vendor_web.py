"""Fetch, verify and record the web client's third-party browser code (docs/web-client.md).

    python scripts/vendor_web.py          # fetch the pinned versions, write the files, VERSIONS
    python scripts/vendor_web.py --check  # fetch again and fail unless the committed files match

Each package is fetched with `npm pack <name>@<version>` (the npm client, no Node.js project
needed), its tarball checked against the integrity pinned here (the registry's own sha512),
and the chosen files copied with the package's licence. VERSIONS in each target folder records
name, version, source and the sha256 of every file copied; tests/web/test_vendor.py checks the
committed files against it without any network. To update: change a pin below (version and
the integrity `npm view <name>@<version> dist.integrity` prints), run this, test, commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_VENDOR = ROOT / "src" / "gemini_backend" / "web" / "static" / "vendor"
TEST_VENDOR = ROOT / "tests" / "web" / "vendor"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    integrity: str  # the registry's sha512 of the tarball
    repository: str
    license: str
    files: dict[str, str]  # path in the package -> file name in `target`
    target: Path


PINS = [
    Pin(
        "marked",
        "18.2.1",
        "sha512-ii4bxCTCqqwpT86XZWgJNs+ZnAIZksmLGYMViWA7PDIXYIeNo1x6cDdX3JOip9NM/cI6p8z57FxliACboTruMA==",
        "https://github.com/markedjs/marked",
        "MIT",
        {"lib/marked.esm.js": "marked.esm.js", "LICENSE": "LICENSE.marked"},
        WEB_VENDOR,
    ),
    Pin(
        "dompurify",
        "3.5.0",
        "sha512-LYC0ZkE8P1V42JsRYTwMdme/2ET8SpOc5AA2eOFjP/IadvRd2fwiT4TVz5vkfy0XUx12aS2UaRkTnfVPNOv9vw==",
        "https://github.com/cure53/DOMPurify",
        "MPL-2.0 OR Apache-2.0",
        {
            "dist/purify.min.js": "purify.min.js",
            "LICENSE": "LICENSE.dompurify",
            "LICENSE-MPL": "LICENSE-MPL.dompurify",
        },
        WEB_VENDOR,
    ),
    Pin(
        "axe-core",
        "4.14.1",
        "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==",
        "https://github.com/dequelabs/axe-core",
        "MPL-2.0",
        {"axe.min.js": "axe.min.js", "LICENSE": "LICENSE.axe-core"},
        TEST_VENDOR,
    ),
]


def fetch(pin: Pin, workdir: Path) -> dict[str, bytes]:
    """The pinned package's chosen files, from a tarball whose integrity was checked."""
    # Fixed arguments from the pins above; npm from PATH, as a developer runs it.
    command = ["npm", "pack", f"{pin.name}@{pin.version}", "--json", "--pack-destination", workdir]
    out = subprocess.run(  # noqa: S603
        command, check=True, capture_output=True, text=True, cwd=workdir
    )
    tarball = workdir / json.loads(out.stdout)[0]["filename"]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != pin.integrity:
        sys.exit(f"{pin.name}@{pin.version}: the tarball does not match the pinned integrity")
    files = {}
    with tarfile.open(tarball) as archive:
        for inner, name in pin.files.items():
            member = archive.extractfile(f"package/{inner}")
            if member is None:
                sys.exit(f"{pin.name}@{pin.version}: no {inner} in the package")
            files[name] = member.read()
    return files


def versions_text(entries: list[tuple[Pin, dict[str, bytes]]]) -> str:
    lines = [
        "# Third-party files in this folder, written by scripts/vendor_web.py (make vendor-web).",
        "# name version license source; then each file with its sha256.",
    ]
    for pin, files in entries:
        lines.append(
            f"{pin.name} {pin.version} {pin.license} npm:{pin.name}@{pin.version} "
            f"{pin.repository} {pin.integrity}"
        )
        for name, body in sorted(files.items()):
            lines.append(f"  {name} sha256:{hashlib.sha256(body).hexdigest()}")
    return "\n".join(lines) + "\n"


def main(check: bool) -> int:
    by_target: dict[Path, list[tuple[Pin, dict[str, bytes]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pin in PINS:
            by_target.setdefault(pin.target, []).append((pin, fetch(pin, Path(tmp))))
    problems = []
    for target, entries in by_target.items():
        wanted = {name: body for _, files in entries for name, body in files.items()}
        wanted["VERSIONS"] = versions_text(entries).encode()
        for name, body in wanted.items():
            path = target / name
            if check:
                if not path.is_file() or path.read_bytes() != body:
                    problems.append(str(path.relative_to(ROOT)))
            else:
                target.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
                print(f"wrote {path.relative_to(ROOT)}")
    if problems:
        print("differ from the pinned packages:", *problems, sep="\n  ")
        return 1
    if check:
        print("vendored files match the pinned packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))
