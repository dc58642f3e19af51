"""What the API's routers share: the error shape of API.md, JSON bodies, the scope check.

Kept apart from loops_project.api (the NinjaAPI, which adds the routers) so that the routers
import these without importing the API that imports them."""

import json

from django.conf import settings
from django.http import HttpResponse
from ninja import Schema
from ninja.errors import HttpError

from accounts.models import TokenScope
from loops_project import strict_json
from loops_project.errors import DomainError


def parse_json(raw: bytes | str, *, field: str = ""):
    """The API's JSON (loops_project.strict_json): no NaN or Infinity, no number that
    overflows, no NUL character or lone surrogate, nesting within LOOPS_MAX_JSON_DEPTH."""
    return strict_json.parse(raw, field=field)


class ErrorBody(Schema):
    code: str
    message: str
    details: dict | list | None = None


class ErrorOut(Schema):
    error: ErrorBody


def error_response(status: int, code: str, message: str, details=None) -> HttpResponse:
    body = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return HttpResponse(json.dumps(body), status=status, content_type="application/json")


def too_large_response() -> HttpResponse:
    limit = settings.LOOPS_MAX_REQUEST_BYTES
    return error_response(413, "too_large", f"The request body is larger than {limit} bytes.")


def require_full_scope(request) -> None:
    if request.auth.scope != TokenScope.FULL:
        raise HttpError(
            403, "This token's scope (trigger) only allows triggering and reading runs."
        )


def json_body(request, *, required: bool = True, field: str = "body"):
    """The request's JSON body (parse_json); 400 or 422 naming the problem and where it is
    (`field` names the body itself, and prefixes its members: `body.items[2]`)."""
    raw = request.body
    if not raw.strip():
        if required:
            raise DomainError(
                "The request body must be JSON.", code="invalid_json", details={"field": field}
            )
        return None
    return parse_json(raw, field=field)


ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut, 429: ErrorOut}
ERRORS_FULL = {**ERRORS, 403: ErrorOut}
