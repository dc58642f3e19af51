"""What the API's routers share: the error shape of API.md, JSON bodies, token auth and scopes.

Kept apart from loops_project.api (the NinjaAPI, which adds the routers) so that the routers
import these without importing the API that imports them."""

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Field, Schema
from ninja.errors import AuthorizationError
from ninja.security import HttpBearer

from accounts.models import ApiToken, TokenScope
from accounts.services import token_authenticate
from loops_project import strict_json
from loops_project.errors import DomainError


def parse_json(raw: bytes | str, *, field: str = ""):
    """The API's JSON (loops_project.strict_json): no NaN or Infinity, no number that
    overflows, no NUL character or lone surrogate, nesting within LOOPS_MAX_JSON_DEPTH."""
    return strict_json.parse(raw, field=field)


class FieldError(Schema):
    field: str | None = Field(
        description="The offending field, dotted as in the request (`input.items[2]`); null "
        "when no one field is to blame."
    )
    message: str = Field(description="What is wrong with it.")
    line: int | None = Field(
        None, description="The program's line, only for `invalid_code` (field `code`)."
    )


class ErrorBody(Schema):
    code: str
    message: str
    details: list[FieldError] | None = Field(
        None, description="The field errors, when the error is about the request's fields."
    )


class ErrorOut(Schema):
    error: ErrorBody


def field_errors(exc: DomainError) -> list[dict] | None:
    """A domain error's details (loops_project.errors) as the API's `details`: a list of
    {"field", "message"} like a validation error's, with the program's `line` for code."""
    if not exc.details:
        return None
    error = {"field": exc.details.get("field"), "message": exc.details.get("reason", exc.message)}
    if "line" in exc.details:
        error["line"] = exc.details["line"]
    return [error]


def error_response(
    status: int, code: str, message: str, details: list[dict] | None = None
) -> HttpResponse:
    """The API's error answer; `details`, when given, is a list of FieldError."""
    body = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return HttpResponse(json.dumps(body), status=status, content_type="application/json")


def too_large_response() -> HttpResponse:
    limit = settings.LOOPS_MAX_REQUEST_BYTES
    return error_response(413, "too_large", f"The request body is larger than {limit} bytes.")


class TokenAuth(HttpBearer):
    """The API's auth: an active token of any scope, on request.auth with its organization."""

    openapi_description = "An API token of the organization (scope `trigger` or `full`)."

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return token_authenticate(token)


class FullScopeAuth(TokenAuth):
    """The auth of the routers whose every call needs a `full` token. A valid token of another
    scope answers 403 (API.md) before anything of the call is read; a missing or unknown one
    401, as everywhere."""

    openapi_description = "An API token of the organization with scope `full`."

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        found = super().authenticate(request, token)
        if found is not None and found.scope != TokenScope.FULL:
            raise AuthorizationError(
                message=f"This token's scope ({found.scope}) only allows triggering and "
                "reading runs."
            )
        return found


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


def trigger_body(request):
    """A trigger's input, which becomes `event.body`: its JSON body, and an empty object when
    there is no body at all (`curl -X POST` without `-d`), so that `event.body.get(...)` works
    as in every example."""
    return json_body(request) if request.body.strip() else {}


ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut, 429: ErrorOut}
ERRORS_FULL = {**ERRORS, 403: ErrorOut}
