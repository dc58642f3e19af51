from django.conf import settings

from loops_project.api import too_large_response


class ApiBodySizeMiddleware:
    """Answer 413 for an API body over the limit before Django reads it (it would say 400)."""

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
        return self.get_response(request)
