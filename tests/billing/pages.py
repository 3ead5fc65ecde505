"""Reading the built-in mock's HTML pages the way a browser uses them."""

from __future__ import annotations


def form_actions(html: str) -> dict[str, str]:
    """{button label: form action} of a mock page, as a browser would submit them."""
    actions = {}
    for form in html.split("<form")[1:]:
        action = form.split("action='")[1].split("'")[0].replace("&amp;", "&")
        label = form.split("<button type='submit'>")[1].split("<")[0]
        actions[label] = action
    return actions
