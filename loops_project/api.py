"""The one NinjaAPI: token auth, the error shape of API.md, and the apps' routers."""

import threading

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DataError
from django.http import Http404, HttpRequest
from django_ratelimit.core import get_usage
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.parser import Parser
from ninja.throttling import BaseThrottle

from accounts import api as accounts_api
from loops import api as loops_api
from loops_project import strict_json
from loops_project.api_base import (
    TokenAuth,
    error_response,
    field_errors,
    parse_json,
    too_large_response,
)
from loops_project.errors import DomainError
from runs import api as runs_api
from runs import api_approvals, api_bulk
from runs import api_patches as runs_api_patches


class StrictParser(Parser):
    def parse_body(self, request: HttpRequest):
        return parse_json(request.body)


def count_request(request: HttpRequest, token_hash: str) -> dict | None:
    """Count the request against its token's rate (settings.LOOPS_API_RATE, read on every
    request so that a change applies at once) and return django-ratelimit's usage: a fixed
    window, one cache increment per request whatever the rate. A request is counted once, by
    whichever of the trigger statement (runs/trigger_statement.py) and the throttle sees it
    first; the token is known by its hash to both."""
    if not hasattr(request, "_token_usage"):
        request._token_usage = get_usage(
            request, group="api-token", key=lambda group, req: token_hash,
            rate=settings.LOOPS_API_RATE, increment=True,
        )  # fmt: skip
    return request._token_usage


class TokenRateThrottle(BaseThrottle):
    """Per token. The wait of the current request is thread-local because one instance serves
    every server thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def allow_request(self, request: HttpRequest) -> bool:
        auth = getattr(request, "auth", None)
        if auth is None:
            return True
        usage = count_request(request, auth.token_hash)
        if usage is not None and usage["should_limit"]:
            self._local.wait = usage["time_left"]
            return False
        return True

    def wait(self) -> float | None:
        return max(getattr(self._local, "wait", 1.0), 1.0)


class LoopsAPI(NinjaAPI):
    """The OpenAPI schema is built once per process: building it costs 0.3 to 0.5 s of CPU on
    these machines, and /api/openapi.json is served without a token."""

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        if path_prefix is None:
            path_prefix = self.get_root_path(path_params or {})
        schemas = self.__dict__.setdefault("_openapi_schemas", {})
        if path_prefix not in schemas:
            schemas[path_prefix] = super().get_openapi_schema(path_prefix=path_prefix)
        return schemas[path_prefix]


api = LoopsAPI(
    title="Loops API",
    version="1",
    description="Durable workflows for operations teams. Authenticate with "
    "`Authorization: Bearer <token>` (a per-organization API token). Errors answer "
    '`{"error": {"code", "message", "details"?}}`; `details`, when present, is always a list '
    'of field errors `[{"field", "message"}]` (an `invalid_code` error adds the program\'s '
    "`line`), whatever the error: bad JSON, a body of the wrong shape, a refused value.",
    auth=TokenAuth(),
    throttle=[TokenRateThrottle()],
    parser=StrictParser(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


@api.exception_handler(AuthenticationError)
def on_auth_error(request, exc):
    return error_response(
        401, "unauthorized", "A valid API token is required (Authorization: Bearer <token>)."
    )


@api.exception_handler(Throttled)
def on_throttled(request, exc: Throttled):
    # ninja sets Retry-After on this response from the throttle's wait().
    return error_response(429, "rate_limited", "Too many requests for this token; slow down.")


@api.exception_handler(DomainError)
def on_domain_error(request, exc: DomainError):
    return error_response(exc.status, exc.code, exc.message, field_errors(exc))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    message = str(exc) if str(exc) and "matches the given query" not in str(exc) else "Not found."
    return error_response(404, "not_found", message)


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError):
    details = []
    for err in exc.errors:
        loc = [str(p) for p in err.get("loc", [])]
        named = [p for p in loc if p not in ("body", "query", "path", "payload", "header")]
        field = ".".join(named) or ("body" if "body" in loc else None)
        details.append({"field": field, "message": err.get("msg", "invalid")})
    fields = ", ".join(dict.fromkeys(d["field"] for d in details if d["field"])) or "request"
    first = details[0]["message"] if details else "invalid"
    return error_response(422, "validation_error", f"Invalid {fields}: {first}", details)


HTTP_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              409: "conflict", 413: "too_large", 422: "invalid", 429: "rate_limited"}  # fmt: skip


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, strict_json.JsonValueError):
        return on_domain_error(request, cause)
    if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
        # ninja could not parse the body: name the problem instead of a generic sentence.
        message = f"The request body is not valid JSON: {cause}"
        return error_response(400, "invalid_json", message, [{"field": "body", "message": message}])
    code = HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.message))


@api.exception_handler(RequestDataTooBig)
def on_too_big(request, exc):
    return too_large_response()


@api.exception_handler(DataError)
def on_data_error(request, exc):
    # Values the database refuses (out-of-range numbers and the like) are bad input, not a 500.
    return error_response(
        422, "invalid_value", "The request holds a value the database cannot store."
    )


# A token's scope is its router's: a `trigger` token may trigger runs and read them
# (trigger_router, router), every other call needs a `full` one (routers made with
# api_base.FullScopeAuth). api_bulk comes before router, whose GET /runs/{run_id} would
# otherwise take POST /runs/bulk (405).
api.add_router("/loop", runs_api.trigger_router)
api.add_router("/v1", api_bulk.router)
api.add_router("/v1", runs_api.router)
api.add_router("/v1", runs_api.full_router)
api.add_router("/v1", api_approvals.router)
api.add_router("/v1", runs_api_patches.router)
api.add_router("/v1", loops_api.router)
api.add_router("/v1", accounts_api.router)
