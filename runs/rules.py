"""What a run may take and when a loop may start one: the same rules for the API, the pages,
schedules, batches, step.run_loop and the trigger URL's one statement."""

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from loops.models import Loop
from loops_project import strict_json
from loops_project.errors import Conflict, TooLarge


@dataclass(frozen=True)
class Requirement:
    """A loop starts no run while `field` (an attname) holds `refused`; a trigger of such a
    loop is a 409 with this code and message."""

    field: str
    refused: object
    code: str
    message: str


# What a loop needs to start a run, written once: check_triggerable reads it for a loop at hand,
# TRIGGERABLE for queries (the trigger URL's one statement among them).
TRIGGER_REQUIREMENTS = (
    Requirement("paused", True, "loop_paused", "Loop '{slug}' is paused"),
    Requirement(
        "active_version_id", None, "no_active_version", "Loop '{slug}' has no deployed version"
    ),
)
# Loops that may start a run: not paused, with a deployed version.
TRIGGERABLE = Q(*(~Q(**{r.field: r.refused}) for r in TRIGGER_REQUIREMENTS))


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
    """The 409 of the first requirement the loop fails (TRIGGER_REQUIREMENTS), if any."""
    for requirement in TRIGGER_REQUIREMENTS:
        if getattr(loop, requirement.field) == requirement.refused:
            raise Conflict(requirement.message.format(slug=loop.slug), code=requirement.code)
