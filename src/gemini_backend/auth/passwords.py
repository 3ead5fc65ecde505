"""Password policy (NIST SP 800-63B): 8 to 128 characters, no composition rules, and no password
from a list of commonly used ones (zxcvbn's list of the 30,000 most common passwords)."""

from __future__ import annotations

from functools import cache

from gemini_backend.core.errors import ValidationFailed

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128


class CommonPassword(ValidationFailed):
    code = "password_too_common"
    detail = "This password is too common; choose another."


@cache
def _common_passwords() -> frozenset[str]:
    # Loaded at the first password set, not at start (its lists are a cold start's 0.1 s).
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])


def check_password_policy(password: str) -> None:
    """Raise 422 for a commonly used password (length is checked by the request schema)."""
    if password.lower() in _common_passwords():
        raise CommonPassword()
