"""The framework ceiling: a bare FastAPI JSON endpoint (and a bare Starlette one), served by
uvicorn exactly as `gemini-backend serve` serves the service (src/gemini_backend/cli.py): one
process, uvicorn's automatic loop and HTTP parser (uvloop and httptools, both installed),
proxy headers on, no log config, no access log.

    .venv/bin/python bench/bare_app.py --port 8090
    GET /bare       FastAPI route returning a small JSON object (the reference of every figure)
    GET /starlette  plain Starlette route returning the same object (no FastAPI layer)
    GET /health     readiness probe of the harness
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

app = FastAPI(title="bench bare app", redirect_slashes=False)


@app.get("/bare")
async def bare() -> dict[str, object]:
    return {"status": "ok", "id": 1, "name": "bare"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _starlette(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "id": 1, "name": "bare"})


app.router.routes.append(Route("/starlette", _starlette, methods=["GET"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    # The options of gemini_backend.cli._serve (minus the app factory).
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        proxy_headers=True,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
