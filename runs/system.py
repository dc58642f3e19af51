"""The platform's own django-q2 schedules (also created by migration runs.0002)."""

from django_q.models import Schedule

SYSTEM_SCHEDULES = {
    "loops:recover-runs": "runs.tasks.recover_runs",
    "loops:fire-schedules": "runs.tasks.fire_due_schedules",
}


def ensure_system_schedules() -> None:
    for name, func in SYSTEM_SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
        )
