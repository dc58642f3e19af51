from urllib.parse import unquote

from django.conf import settings
from django.http import HttpResponseBadRequest

from loops_project.api_base import error_response, too_large_response

NUL_MESSAGE = "NUL characters are not allowed in the path or query."
PLAIN_ERRORS = {
    404: ("not_found", "No such API endpoint."),
    405: ("method_not_allowed", "This endpoint does not allow the {method} method."),
}


class ApiBodySizeMiddleware:
    """The API's answers that Django, not an endpoint, would give, and a guard for pages.

    A NUL character in the path or query, which no database column can hold, is a 400 for
    every request (PostgreSQL's driver refuses it: a page that looks it up would fail with a
    500). For the API: a body over the limit is 413 before Django reads it (Django would say
    400 or fail later), and an unknown path or method answers in the API's error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = unquote(request.META.get("QUERY_STRING", ""))
        has_nul = "\x00" in request.path or "\x00" in query
        if not request.path.startswith("/api/"):
            if has_nul:
                return HttpResponseBadRequest(
                    "NUL characters are not allowed in the path or query.",
                    content_type="text/plain",
                )
            return self.get_response(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.LOOPS_MAX_REQUEST_BYTES:
            return too_large_response()
        if has_nul:
            return error_response(400, "bad_request", NUL_MESSAGE)
        response = self.get_response(request)
        plain = PLAIN_ERRORS.get(response.status_code)
        if plain and not response.get("Content-Type", "").startswith("application/json"):
            code, message = plain
            answer = error_response(
                response.status_code, code, message.format(method=request.method)
            )
            if response.has_header("Allow"):
                answer["Allow"] = response["Allow"]
            return answer
        return response
