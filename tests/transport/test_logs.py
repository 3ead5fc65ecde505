"""Tracebacks in the logs: the whole traceback in a JSON line, and never a frame's locals (a
request's headers, its token) in the console."""

from __future__ import annotations

import json
import logging

import pytest

from gemini_backend.core.logging import configure_logging
from tests.test_app import restore_logging  # noqa: F401 (a fixture)

TOKEN = "Bearer s3cr3t-token-in-a-local"


def _fail_with_a_secret_local() -> None:
    authorization = TOKEN  # what a frame of a request handler holds
    raise RuntimeError(f"boom {len(authorization)}")


def _log_an_exception(logger_name: str) -> None:
    try:
        _fail_with_a_secret_local()
    except RuntimeError:
        # As uvicorn logs "Exception in ASGI application": a standard library record.
        logging.getLogger(logger_name).exception("Exception in ASGI application")


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_traceback(capsys, make_settings):
    configure_logging(make_settings(log_format="json"))
    _log_an_exception("uvicorn.error")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (line,) = [entry for entry in lines if entry["event"] == "Exception in ASGI application"]
    assert line["level"] == "error"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "_fail_with_a_secret_local" in line["exception"]
    assert "RuntimeError: boom" in line["exception"]
    assert TOKEN not in json.dumps(line)


@pytest.mark.usefixtures("restore_logging")
def test_console_tracebacks_show_no_locals(capsys, make_settings):
    configure_logging(make_settings(log_format="console"))
    _log_an_exception("uvicorn.error")
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err
    assert "_fail_with_a_secret_local" in err
    assert TOKEN not in err
