"""Domain errors: raised by services, answered in one shape by the API, pages and commands."""


class DomainError(Exception):
    """`details` says where the error is, for the pages, the commands and the API alike:
    `field` (the request's name for it), and for a program `line` and `reason`. The API answers
    it as its one `details` shape, a list of field errors (loops_project.api_base.field_errors).
    """

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


class Invalid(DomainError):
    status = 422
    code = "invalid"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class TooLarge(DomainError):
    status = 413
    code = "too_large"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class Busy(DomainError):
    """The organization already does as many of these at once as it may: try again soon."""

    status = 429
    code = "busy"
