from urllib.parse import unquote

from django.conf import settings

from loops_project.api import error_response, too_large_response

PLAIN_ERRORS = {
    404: ("not_found", "No such API endpoint."),
    405: ("method_not_allowed", "This endpoint does not allow the {method} method."),
}


class ApiBodySizeMiddleware:
    """The API's answers that Django, not an endpoint, would give.

    A body over the limit is 413 before Django reads it (Django would say 400 or fail later);
    a NUL character in the path or query, which no database column can hold, is a 400 instead
    of a database error; an unknown path or method answers in the API's error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith("/api/"):
            return self.get_response(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.LOOPS_MAX_REQUEST_BYTES:
            return too_large_response()
        query = unquote(request.META.get("QUERY_STRING", ""))
        if "\x00" in request.path or "\x00" in query:
            return error_response(
                400, "bad_request", "NUL characters are not allowed in the path or query."
            )
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
