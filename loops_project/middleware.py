from urllib.parse import unquote

from django.conf import settings

from loops_project.api import error_response, too_large_response


class ApiBodySizeMiddleware:
    """For the API: a body over the limit is 413 before Django reads it (Django would say 400
    or fail later), and a NUL character in the path or query, which no database column can
    hold, is a 400 instead of a database error."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
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
        return self.get_response(request)
