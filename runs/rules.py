"""What a run may take and when a loop may start one: the same rules for the API, the pages,
schedules, batches, step.run_loop and the trigger URL's one statement."""

from django.conf import settings
from django.db.models import Q

from loops.models import Loop
from loops_project import strict_json
from loops_project.errors import Conflict, TooLarge

# Loops that may start a run: not paused, with a deployed version.
TRIGGERABLE = Q(paused=False, active_version__isnull=False)


def check_input(value, *, field: str = "input") -> str:
    """The value's JSON text, once it is storable (loops_project.strict_json: finite numbers,
    no NUL or lone surrogate, not nested too deeply) and within LOOPS_MAX_INPUT_BYTES. Every
    JSON value a run takes in passes here: inputs, answers, events, scan results."""
    text = strict_json.dumps(value, field=field)
    size, limit = len(text.encode()), settings.LOOPS_MAX_INPUT_BYTES
    if size > limit:
        raise TooLarge(
            f"{field} is {size} bytes; the limit is {limit} bytes",
            code="input_too_large",
            details={"field": field},
        )
    return text


def check_triggerable(loop: Loop) -> None:
    if loop.paused:
        raise Conflict(f"Loop '{loop.slug}' is paused", code="loop_paused")
    if loop.active_version_id is None:
        raise Conflict(f"Loop '{loop.slug}' has no deployed version", code="no_active_version")
