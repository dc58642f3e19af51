"""Exceptions for the API's error answers, built from its one error shape:
`{"error": {"code": "<snake_case>", "message": "<sentence>", "details": [{"field", "message"}]}}`.

Branch on the class (by HTTP status) or on `code`, which is stable; `message` is for people.
Network failures (connection refused, a request's timeout) are httpx's own exceptions
(`httpx.TransportError`); they are not answers of the API.
"""

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast

import httpx

from loops_client.types import FieldError

if TYPE_CHECKING:
    from loops_client.types import Run


class LoopsError(Exception):
    """An error answer of the API (or, for `PollTimeout`, of `Client.poll`).

    - `status`: the HTTP status (None for a PollTimeout);
    - `code`: the API's snake_case error code (`not_found`, `invalid_filter` …);
    - `message`: the API's sentence;
    - `details`: the field errors, `[{"field": …, "message": …}]`, empty when there are none.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        details: list[FieldError] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details: list[FieldError] = details or []

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    @property
    def fields(self) -> list[str]:
        """The names of the offending fields, in the order the API gave them."""
        return [name for d in self.details if (name := d.get("field"))]


class InvalidRequest(LoopsError):
    """400, 413 or 422: the request does not fit the call (bad JSON, a wrong field, an unknown
    filter value, an answer that does not match what the run waits for, too large)."""


class AuthError(LoopsError):
    """401 (no valid token) or 403 (the token's scope does not allow the call)."""


class NotFound(LoopsError):
    """404: no such object in the token's organization (another organization's looks the
    same), or no such endpoint."""


class Conflict(LoopsError):
    """409: the object is not in a state that allows the call (a run that has ended, a paused
    loop, a run not waiting for a person)."""


class RateLimited(LoopsError):
    """429: too many requests for this token. `retry_after` is the server's `Retry-After` in
    seconds (None if it sent none)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(LoopsError):
    """5xx: the server (or a proxy in front of it) failed. Bad input never causes one."""


class PollTimeout(LoopsError, TimeoutError):
    """`Client.poll` waited its whole timeout and the run neither ended nor came to wait for
    a person. `run` is the run as last seen."""

    def __init__(self, message: str, *, run: "Run") -> None:
        super().__init__(message, code="poll_timeout")
        self.run = run


_BY_STATUS: dict[int, type[LoopsError]] = {
    400: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


def error_from_response(response: httpx.Response) -> LoopsError:
    """The exception for an error answer. An answer without the API's envelope (a proxy's
    page, a wrong base URL) still gives its status's class, with code `http_<status>`."""
    status = response.status_code
    code, message, details = f"http_{status}", "", None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        details = _field_errors(error.get("details"))
    if not message:
        message = f"{response.reason_phrase or 'Error'} from {response.request.url}"
        if error is None:
            message += " (not an error of the Loops API: is the base URL right?)"
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else LoopsError)
    if kind is RateLimited:
        return RateLimited(
            message, code=code, status=status, details=details,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )  # fmt: skip
    return kind(message, code=code, status=status, details=details)


def _field_errors(raw: Any) -> list[FieldError] | None:
    # The API sends a list; a server from before that sent one object, kept as a list of one.
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        return None
    return [cast(FieldError, item) for item in raw if isinstance(item, dict)]


def _retry_after(raw: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP date (RFC 9110)."""
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
