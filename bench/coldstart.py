"""Cold start: `python -m bench.coldstart [--runs 5]`.

The time from starting a process to its first `200` on `/health` (polled every 10 ms), for
`gemini-backend serve` (embedded mode, a fresh DATA_DIR, its migrations applied at start as a
first deployment would) and for the bare FastAPI app under uvicorn (bench/bare_app.py, the
framework's own start), alternated run by run; then the heaviest imports of the service's
app (`python -X importtime`), cumulative. The target: the service within 3x the bare app.

Prints the figures and writes bench/results/coldstart-<date>.json.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import httpx

from bench.procs import BIN, SERVICE, clean_env, free_port

HERE = Path(__file__).resolve().parent


def time_to_health(argv: list[str], env: dict[str, str], port: int, timeout: float) -> float:
    """Seconds from the process's start to its first 200 on /health (it is stopped after)."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() - began < timeout:
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        return time.monotonic() - began
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


def service_start(timeout: float) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gb-coldstart-") as data:
        env = clean_env(
            ENVIRONMENT="development",
            JWT_SECRET=secrets.token_urlsafe(48),
            DATA_DIR=data,
            LOG_LEVEL="WARNING",
        )
        return time_to_health([str(SERVICE), "serve", "--port", str(port)], env, port, timeout)


def bare_start(timeout: float) -> float:
    port = free_port()
    argv = [str(BIN / "python"), str(HERE / "bare_app.py"), "--port", str(port)]
    return time_to_health(argv, clean_env(), port, timeout)


def heaviest_imports(top: int) -> list[tuple[str, float]]:
    """The packages the service's app imports (top-level names, its own excluded) by the
    cumulative time of their first import (ms), heaviest first."""
    found = subprocess.run(
        [str(BIN / "python"), "-X", "importtime", "-c", "import gemini_backend.main"],
        env=clean_env(),
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--output-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)
    service: list[float] = []
    bare: list[float] = []
    for n in range(args.runs):
        order = (service, bare) if n % 2 == 0 else (bare, service)
        for times in order:
            start = service_start if times is service else bare_start
            times.append(start(args.timeout))
        print(f"run {n + 1}: service {service[-1]:.2f} s, bare {bare[-1]:.2f} s", flush=True)
    imports = heaviest_imports(12)
    ratio = statistics.median(service) / statistics.median(bare)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "service_s": [round(x, 3) for x in service],
        "bare_s": [round(x, 3) for x in bare],
        "service_median_s": round(statistics.median(service), 3),
        "bare_median_s": round(statistics.median(bare), 3),
        "ratio": round(ratio, 2),
        "target": "service <= 3x bare",
        "met": ratio <= 3,
        "heaviest_imports_ms": imports,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }
    verdict = "met" if result["met"] else "missed"
    print(
        f"/health first answered: service {result['service_median_s']} s median, bare app "
        f"{result['bare_median_s']} s: {ratio:.2f}x (target 3x: {verdict})"
    )
    for name, ms in imports:
        print(f"  import {name}: {ms:.0f} ms")
    out = Path(args.output_dir) / f"coldstart-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
