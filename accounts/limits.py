"""What an organization may have at most (LOOPS_MAX_LOOPS_PER_ORG, _SCHEDULES_, _WEBHOOKS_,
_BULK_JOBS_): each bound keeps one organization's objects from slowing down what every
organization shares (the claims of runs, the clock, the webhook senders, the workers)."""

from django.db.models import QuerySet

from loops_project.errors import Conflict


def check_room(existing: QuerySet, limit: int, noun: str, *, hint: str) -> None:
    """Conflict (`too_many_<noun>`) when the organization has `limit` of them already."""
    if existing.count() >= limit:
        raise Conflict(
            f"The organization has {limit} {noun}, the most it may have: {hint}",
            code=f"too_many_{noun.replace(' ', '_')}",
        )
