"""The minimal HTML pages of billing (the checkout landing pages, the mock's checkout and
portal): shared by the router and the mock, which the composition root builds."""

from __future__ import annotations

import html

from fastapi.responses import HTMLResponse


def page(title: str, body: str) -> HTMLResponse:
    """A minimal HTML page (the landing pages here, the mock's checkout and portal)."""
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        # No icon: else a browser asks for /favicon.ico, a 404 in its console.
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;"
        "padding:0 1rem}button{font-size:1rem;padding:.5rem 1.2rem;margin:.3rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
