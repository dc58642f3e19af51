from django.conf import settings

from loops_project.errors import Invalid
from runs.engine.sandbox.policy import CodeError, compile_loop

MAX_CODE_BYTES = 256 * 1024


def validate_code(code: str) -> None:
    """Raise Invalid (with `line` in details) unless the program may be deployed."""
    if not code.strip():
        raise Invalid(
            "Line 1: the program is empty",
            code="invalid_code",
            details={"field": "code", "line": 1, "reason": "the program is empty"},
        )
    # surrogatepass: a lone surrogate is compile_loop's to refuse, with its line.
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        reason = f"the program is larger than {MAX_CODE_BYTES} bytes"
        raise Invalid(
            f"Line 1: {reason}",
            code="invalid_code",
            details={"field": "code", "line": 1, "reason": reason},
        )
    try:
        compile_loop(code, guards=settings.LOOPS_PYTHON_GUARDS)
    except CodeError as exc:
        raise Invalid(
            str(exc),
            code="invalid_code",
            details={"field": "code", "line": exc.line, "reason": exc.message},
        ) from None
