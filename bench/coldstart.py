"""Cold start: `python -m bench.coldstart [--runs 5] [--old <git-rev-or-worktree>]`.

The time from starting a process to its first `200` on `/health` (polled every 10 ms), for
`gemini-backend serve` in embedded mode, two ways: `first` (a fresh DATA_DIR, its migrations
applied at start as a first deployment would) and `restart` (a DATA_DIR already at the latest
migration, as every later start), and for the bare FastAPI app under uvicorn
(bench/bare_app.py, the framework's own start); then the heaviest imports of the service's app
(`python -X importtime`), cumulative. The target: the service within 3x the bare app.

With `--old`, the same starts of an older revision (checked out into a temporary git worktree;
a directory is used as it is) run in the same rounds, on this venv's interpreter with each
side's `src` first on PYTHONPATH (as bench/ab.py does): a same-time A/B. The order of the
starts rotates from round to round; the 1-minute load average is recorded with each round.

Every process runs as the Dockerfile's image would: on a venv of the runtime dependencies only
(uv.lock without the `dev` extra; built with uv under the work directory from uv's cache) with
their bytecode compiled, and each side's `src` compiled too (`compileall`, into its
`__pycache__`). Otherwise a machine with PYTHONDONTWRITEBYTECODE=1 (this one) compiles every
module a process imports from source at every start, and the dev tools change what the service
imports (structlog loads rich, which import-linter and schemathesis bring, for its
tracebacks). `--dev-venv` runs on this venv, as it is.

Prints the figures and writes bench/results/coldstart-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import BIN, ROOT, clean_env, cpu_times, free_port

HERE = Path(__file__).resolve().parent


def runtime_venv(path: Path) -> str:
    """A venv at `path` with what uv.lock pins for running (no `dev` extra), its bytecode
    compiled, as the Dockerfile builds it; its python."""
    subprocess.run(
        [str(BIN / "uv"), "sync", "--frozen", "--no-progress", "--quiet", "--offline"],
        env=dict(os.environ, UV_PROJECT_ENVIRONMENT=str(path), UV_COMPILE_BYTECODE="1"),
        cwd=ROOT,
        check=True,
    )
    return str(path / "bin" / "python")


def compile_sources(python: str, src: Path) -> None:
    """Bytecode for a side's own modules (the Dockerfile's `compileall`)."""
    subprocess.run([python, "-m", "compileall", "-q", str(src)], check=True)


def time_to_health(
    argv: list[str], env: dict[str, str], port: int, timeout: float
) -> tuple[float, float]:
    """Seconds from the process's start to its first 200 on /health, and the CPU seconds
    (user + system) it had used by then (it is stopped after). The CPU time is the steadier
    figure on a loaded machine: the wall time includes the waits for a core."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() - began < timeout:
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        elapsed = time.monotonic() - began
                        return elapsed, sum(cpu_times([proc.pid]))
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
                time.sleep(0.01)
        raise RuntimeError(f"no /health within {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Side:
    """One revision of the service: its source tree, and a DATA_DIR kept at its latest
    migration for the restarts."""

    name: str
    src: Path
    commit: str
    data: Path
    python: str
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    def env(self, data: Path) -> dict[str, str]:
        return clean_env(
            ENVIRONMENT="development",
            JWT_SECRET=self.jwt_secret,
            DATA_DIR=str(data),
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(self.src),
        )

    def serve(self, data: Path, timeout: float) -> tuple[float, float]:
        port = free_port()
        argv = [self.python, "-m", "gemini_backend.cli", "serve", "--port", str(port)]
        return time_to_health(argv, self.env(data), port, timeout)

    def first(self, timeout: float) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="gb-coldstart-") as data:
            return self.serve(Path(data), timeout)

    def restart(self, timeout: float) -> tuple[float, float]:
        return self.serve(self.data, timeout)

    def migrate(self) -> None:
        subprocess.run(
            [self.python, "-m", "gemini_backend.cli", "migrate"],
            env=self.env(self.data),
            check=True,
            capture_output=True,
        )


def bare_start(python: str, timeout: float) -> tuple[float, float]:
    port = free_port()
    argv = [python, str(HERE / "bare_app.py"), "--port", str(port)]
    return time_to_health(argv, clean_env(), port, timeout)


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(ref: str, work: Path) -> Iterator[tuple[Path, str]]:
    """A directory with src/gemini_backend as it is, or a revision in a temporary worktree."""
    path = Path(ref).expanduser()
    if (path / "src" / "gemini_backend").is_dir():
        yield path.resolve(), git("rev-parse", "--short", "HEAD", cwd=path)
        return
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tree = work / "tree-old"
    git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree, commit[:7]
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def heaviest_imports(python: str, top: int) -> list[tuple[str, float]]:
    """The packages the service's app imports (top-level names, its own excluded) by the
    cumulative time of their first import (ms), heaviest first."""
    found = subprocess.run(
        [python, "-X", "importtime", "-c", "import gemini_backend.main"],
        env=clean_env(PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    totals: dict[str, float] = {}
    for line in found.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)$", line)
        if match and not match.group(2).startswith("_"):
            name = match.group(2).split(".")[0]  # the outermost import of a package counts
            totals[name] = max(totals.get(name, 0.0), int(match.group(1)) / 1000)
    totals.pop("gemini_backend", None)
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def run(args: argparse.Namespace, sides: list[Side]) -> dict[str, Any]:
    python = sides[0].python
    starts: dict[str, Callable[[float], tuple[float, float]]] = {
        "bare": lambda timeout: bare_start(python, timeout)
    }
    for side in sides:
        side.migrate()
        starts[f"{side.name} first"] = side.first
        starts[f"{side.name} restart"] = side.restart
    times: dict[str, list[float]] = {name: [] for name in starts}
    cpu: dict[str, list[float]] = {name: [] for name in starts}
    loads: list[float] = []
    names = list(starts)
    for n in range(args.runs):
        loads.append(round(os.getloadavg()[0], 2))
        for name in names[n % len(names) :] + names[: n % len(names)]:  # rotated each round
            wall, used = starts[name](args.timeout)
            times[name].append(round(wall, 3))
            cpu[name].append(round(used, 3))
        shown = ", ".join(f"{name} {times[name][-1]:.2f} s ({cpu[name][-1]:.2f})" for name in names)
        print(f"round {n + 1} (load {loads[-1]}; wall s (CPU s)): {shown}", flush=True)

    def ratios(figures: dict[str, list[float]]) -> dict[str, float]:
        bare = statistics.median(figures["bare"])
        return {
            name: round(statistics.median(values) / bare, 2)
            for name, values in figures.items()
            if name != "bare"
        }

    return {
        "seconds": times,
        "cpu_seconds": cpu,
        "median_s": {name: median(values) for name, values in times.items()},
        "median_cpu_s": {name: median(values) for name, values in cpu.items()},
        "ratio_to_bare": ratios(times),
        "cpu_ratio_to_bare": ratios(cpu),
        "load_average_1min_per_round": loads,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--old", default=None, help="git revision or worktree to compare with")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    p.add_argument("--dev-venv", action="store_true", help="run on this venv, dev tools and all")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gb-coldstart-")))
        python = str(BIN / "python") if args.dev_venv else runtime_venv(work / "venv")
        head = git("rev-parse", "--short", "HEAD")
        sides = [Side("new", ROOT / "src", head, work / "data-new", python)]
        if args.old:
            tree, commit = stack.enter_context(checkout(args.old, work))
            sides.append(Side("old", tree / "src", commit, work / "data-old", python))
        for side in sides:
            side.data.mkdir()
            if not args.dev_venv:
                compile_sources(python, side.src)
        result: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sides": {side.name: side.commit for side in sides},
            "dirty": bool(git("status", "--porcelain")),
            "venv": "dev" if args.dev_venv else "runtime",
            **run(args, sides),
        }
        imports = heaviest_imports(python, 12)
    ratio = result["ratio_to_bare"]["new restart"]
    result.update(
        target="service <= 3x bare (`new restart`: a start on a database at its latest migration)",
        met=ratio <= 3,
        heaviest_imports_ms=imports,
        load_average=[round(x, 2) for x in os.getloadavg()],
        python=sys.version.split()[0],
    )
    for name, value in result["median_s"].items():
        used = result["median_cpu_s"][name]
        shown = (
            ""
            if name == "bare"
            else f": {result['ratio_to_bare'][name]:.2f}x the bare app "
            f"({result['cpu_ratio_to_bare'][name]:.2f}x its CPU)"
        )
        print(f"/health first answered, {name}: {value} s median, {used} s CPU{shown}")
    print(f"target 3x ({ratio:.2f}x on restart): {'met' if result['met'] else 'missed'}")
    for name, ms in result["heaviest_imports_ms"]:
        print(f"  import {name}: {ms:.0f} ms")
    out = Path(args.output_dir) / f"coldstart-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
