"""Date-times given by clients (list filters): ISO 8601 with a time zone, within what the
database can hold once converted to UTC."""

from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime


def aware_datetime(value: str) -> datetime:
    """The date-time `value` names; ValueError saying what is wrong with it otherwise."""
    try:
        parsed = parse_datetime(value) if value else None
    except ValueError:  # well formed but impossible, like month 13
        parsed = None
    if parsed is None:
        raise ValueError(f"'{value}' is not an ISO 8601 date-time")
    if parsed.tzinfo is None:
        raise ValueError("give a time zone (for example 2026-01-01T00:00:00Z)")
    try:
        parsed.astimezone(UTC)  # 9999-12-31T23:00-05:00 is past the last date in UTC
    except OverflowError:
        raise ValueError(f"'{value}' is out of range") from None
    return parsed
