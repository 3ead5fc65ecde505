"""Mobile numbers in E.164, via Google's libphonenumber port.

`phonenumbers` is imported at the first number a process reads, not at its start (the import
is about 0.1 s of a cold start on a loaded machine; bench/README.md).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from gemini_backend.core.errors import ValidationFailed

if TYPE_CHECKING:
    import phonenumbers


class InvalidMobileNumber(ValidationFailed):
    code = "invalid_mobile_number"
    detail = "That is not a valid mobile number."


def _parse(raw: str, default_region: str) -> phonenumbers.PhoneNumber | None:
    import phonenumbers

    text = raw.strip()
    if not text or len(text) > 32:
        return None
    try:
        return phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        return None


def _e164(number: phonenumbers.PhoneNumber) -> str:
    import phonenumbers

    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_mobile_number(
    raw: str, default_region: str, *, also_accept: Collection[str] = ()
) -> str:
    """E.164 form of `raw`; a number without a country code takes `default_region`.

    `also_accept` lists E.164 numbers that are well-formed but not assigned (the fictional
    +1 555 01xx test numbers) and are accepted all the same.
    """
    import phonenumbers

    parsed = _parse(raw, default_region)
    if parsed is None:
        raise InvalidMobileNumber()
    if phonenumbers.is_valid_number(parsed):
        return _e164(parsed)
    if phonenumbers.is_possible_number(parsed) and _e164(parsed) in also_accept:
        return _e164(parsed)
    raise InvalidMobileNumber()


def normalize_test_number(raw: str, default_region: str) -> str:
    """E.164 form of an OTP_TEST_NUMBERS entry: it need only be a possible number."""
    import phonenumbers

    parsed = _parse(raw, default_region)
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"OTP_TEST_NUMBERS: {raw!r} is not a possible phone number")
    return _e164(parsed)
