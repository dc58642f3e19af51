"""The one NinjaAPI: token auth, the error shape of API.md, and the apps' routers."""

import json

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from ninja.throttling import AuthRateThrottle

from accounts.models import ApiToken, TokenScope
from accounts.services import token_authenticate
from loops_project.errors import DomainError


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return token_authenticate(token)


class TokenRateThrottle(AuthRateThrottle):
    """Per token (by id), whatever its name."""

    def get_cache_key(self, request: HttpRequest) -> str | None:
        auth = getattr(request, "auth", None)
        if auth is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": auth.pk}


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


api = NinjaAPI(
    title="Loops API",
    version="1",
    description="Durable workflows for operations teams. Authenticate with "
    "`Authorization: Bearer <token>` (a per-organization API token).",
    auth=TokenAuth(),
    throttle=[TokenRateThrottle(settings.LOOPS_API_RATE)],
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


@api.exception_handler(AuthenticationError)
def on_auth_error(request, exc):
    return error_response(
        401, "unauthorized", "A valid API token is required (Authorization: Bearer <token>)."
    )


@api.exception_handler(DomainError)
def on_domain_error(request, exc: DomainError):
    return error_response(exc.status, exc.code, exc.message, exc.details)


@api.exception_handler(Http404)
def on_not_found(request, exc):
    message = str(exc) if str(exc) and "matches the given query" not in str(exc) else "Not found."
    return error_response(404, "not_found", message)


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError):
    details = []
    for err in exc.errors:
        loc = [str(p) for p in err.get("loc", []) if p not in ("body", "query", "path", "payload")]
        details.append({"field": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    fields = ", ".join(d["field"] for d in details if d["field"]) or "request"
    first = details[0]["message"] if details else "invalid"
    return error_response(422, "validation_error", f"Invalid {fields}: {first}", details)


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    codes = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
             409: "conflict", 413: "too_large", 422: "invalid", 429: "rate_limited"}  # fmt: skip
    response = error_response(
        exc.status_code, codes.get(exc.status_code, "error"), str(exc.message)
    )
    return response


@api.exception_handler(RequestDataTooBig)
def on_too_big(request, exc):
    return too_large_response()


def too_large_response() -> HttpResponse:
    limit = settings.LOOPS_MAX_REQUEST_BYTES
    return error_response(413, "too_large", f"The request body is larger than {limit} bytes.")


def require_full_scope(request) -> None:
    if request.auth.scope != TokenScope.FULL:
        raise HttpError(
            403, "This token's scope (trigger) only allows triggering and reading runs."
        )


def json_body(request, *, required: bool = True):
    """The request's JSON body; 400 naming the problem when it is not JSON."""
    raw = request.body
    if not raw.strip():
        if required:
            raise DomainError("The request body must be JSON.", code="invalid_json")
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DomainError(
            f"The request body is not valid JSON: {exc}",
            code="invalid_json",
            details={"field": "body"},
        ) from None


ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut, 429: ErrorOut}
ERRORS_FULL = {**ERRORS, 403: ErrorOut}


def register_routers() -> None:
    from loops.api import router as loops_router
    from runs.api import router as runs_router
    from runs.api import trigger_router

    api.add_router("/loop", trigger_router)
    api.add_router("/v1", runs_router)
    api.add_router("/v1", loops_router)


register_routers()
