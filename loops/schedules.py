"""Cron schedules: validation, next-time computation (croniter, per time zone) and firing."""

import logging
import time
from datetime import datetime
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.limits import check_room
from loops.models import Loop, Schedule
from loops_project.errors import DomainError, Invalid
from runs import dispatch
from runs.models import TriggerType
from runs.services import check_input, run_trigger

logger = logging.getLogger(__name__)


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name, or Invalid naming the field. Looked up in the list of
    zones first: ZoneInfo also opens other files of its database (a directory such as
    "America" raises IsADirectoryError)."""
    if name not in _zone_names():
        raise Invalid(
            f"timezone '{name}' is not a known time zone (an IANA name such as Europe/Paris)",
            code="invalid_timezone",
            details={"field": "timezone"},
        )
    return ZoneInfo(name)


def next_times(cron: str, tz: str, count: int = 1, after: datetime | None = None) -> list[datetime]:
    """The next `count` times (aware, in UTC) that a cron expression fires in a time zone."""
    local = zone(tz)
    if not croniter.is_valid(cron) or len(cron.split()) != 5:
        raise Invalid(
            f"'{cron}' is not a valid cron expression (five fields: minute hour day month weekday)",
            code="invalid_cron",
            details={"field": "cron"},
        )
    start = (after or timezone.now()).astimezone(local)
    try:
        it = croniter(cron, start)
        return [it.get_next(datetime).astimezone(ZoneInfo("UTC")) for _ in range(count)]
    except (CroniterBadCronError, CroniterBadDateError) as exc:
        raise Invalid(str(exc), code="invalid_cron", details={"field": "cron"}) from None


def _audit(actor: Actor | None, schedule: Schedule, action: str, details: dict) -> None:
    if actor is not None:
        record(organization=schedule.loop.organization_id, actor=actor, action=action,
               object_type="schedule", object_id=schedule.pk, details=details)  # fmt: skip


def _shown(schedule: Schedule) -> dict:
    return {"loop": schedule.loop.slug, "cron": schedule.cron, "timezone": schedule.timezone,
            "enabled": schedule.enabled}  # fmt: skip


@transaction.atomic
def schedule_create(
    *,
    loop: Loop,
    cron: str,
    timezone_name: str = "UTC",
    input=None,
    enabled: bool = True,
    actor: Actor | None = None,
) -> Schedule:
    """A schedule of the loop. Its input is checked as a trigger's is (JSON Loops can store,
    at most LOOPS_MAX_INPUT_BYTES), here and again when it fires."""
    cron = " ".join(cron.split())
    next_run = next_times(cron, timezone_name)[0]
    input = {} if input is None else input
    check_input(input)
    check_room_for_schedule(loop.organization_id)
    schedule = Schedule.objects.create(
        loop=loop, cron=cron, timezone=timezone_name, input=input, enabled=enabled,
        next_run_at=next_run if enabled else None, queue=dispatch.queue_key(),
    )  # fmt: skip
    _audit(actor, schedule, "schedule.create", _shown(schedule))
    return schedule


def check_room_for_schedule(organization_id: str) -> None:
    """Conflict when the organization has LOOPS_MAX_SCHEDULES_PER_ORG schedules already."""
    check_room(
        Schedule.objects.filter(loop__organization_id=organization_id),
        settings.LOOPS_MAX_SCHEDULES_PER_ORG,
        "schedules",
        hint="delete one first",
    )


@transaction.atomic
def schedule_update(*, schedule: Schedule, cron=None, timezone_name=None, input=None,
                    enabled=None, input_given: bool = False,
                    actor: Actor | None = None) -> Schedule:  # fmt: skip
    before = _shown(schedule)
    if cron is not None:
        schedule.cron = " ".join(cron.split())
    if timezone_name is not None:
        schedule.timezone = timezone_name
    if input_given:
        schedule.input = {} if input is None else input
        check_input(schedule.input)
    if enabled is not None:
        schedule.enabled = enabled
    next_run = next_times(schedule.cron, schedule.timezone)[0]
    schedule.next_run_at = next_run if schedule.enabled else None
    schedule.save(update_fields=["cron", "timezone", "input", "enabled", "next_run_at"])
    _audit(actor, schedule, "schedule.update", {"before": before, "after": _shown(schedule)})
    return schedule


@transaction.atomic
def schedule_delete(*, schedule: Schedule, actor: Actor | None = None) -> None:
    _audit(actor, schedule, "schedule.delete", _shown(schedule))
    schedule.delete()


def fire_due_schedules(now: datetime | None = None, seconds: float | None = None) -> int:
    """Start one `system` run for every enabled schedule of this cluster's queue that is due
    (its run is queued there too), the longest due first; returns how many. A schedule whose
    run cannot start (paused loop, input over the limit) is skipped with a warning and moves on
    to its next time. With `seconds`, it stops once that time is spent (the clock's round: the
    rest wait for the next round, and timers are not held up behind them)."""
    now = now or timezone.now()
    until = None if seconds is None else time.monotonic() + seconds
    fired = 0
    due = Schedule.objects.filter(
        queue=dispatch.queue_key(), enabled=True, next_run_at__lte=now
    ).order_by("next_run_at")
    for n, schedule_id in enumerate(list(due.values_list("pk", flat=True)[:500])):
        if n and until is not None and time.monotonic() >= until:
            break  # at least one a round, whatever the time
        with transaction.atomic():
            schedule = (
                Schedule.objects.select_for_update(skip_locked=True)
                .select_related("loop")
                .filter(pk=schedule_id, enabled=True, next_run_at__lte=now)
                .first()
            )
            if schedule is None:
                continue  # another worker took it
            schedule.last_run_at = now
            schedule.next_run_at = next_times(schedule.cron, schedule.timezone, after=now)[0]
            schedule.save(update_fields=["last_run_at", "next_run_at"])
            try:
                with transaction.atomic():
                    run_trigger(
                        loop=schedule.loop, input=schedule.input, trigger_type=TriggerType.SYSTEM
                    )
                fired += 1
            except DomainError as exc:
                logger.warning("schedule %s skipped: %s", schedule.pk, exc.message)
    return fired
