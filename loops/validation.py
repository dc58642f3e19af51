from django.conf import settings

from loops_project.errors import Busy, Invalid
from loops_project.slots import slot
from runs.engine.sandbox.policy import CodeError, compile_loop

MAX_CODE_BYTES = 256 * 1024
# The advisory locks' space of compiles' slots (loops_project.slots): checking a large program
# takes up to a few seconds of a web worker's CPU.
COMPILE_LOCK = 7_270_013


def validate_code(code: str, organization_id: str | None = None) -> None:
    """Raise Invalid (with `line` in details) unless the program may be deployed. For an
    organization, it checks at most LOOPS_COMPILES_PER_ORG programs at once (Busy, 429,
    beyond that), so that its deploys take no more of the web workers' CPU."""
    if organization_id is None:
        return _validate(code)
    with slot(COMPILE_LOCK, organization_id, settings.LOOPS_COMPILES_PER_ORG) as free:
        if not free:
            raise Busy(
                f"The organization already has {settings.LOOPS_COMPILES_PER_ORG} programs being "
                "checked; try again in a few seconds"
            )
        _validate(code)


def _validate(code: str) -> None:
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
