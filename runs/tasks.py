"""django-q2 task entry points: they take ids, and call the engine or a service."""

from runs import webhooks
from runs.engine import executor, recovery, waits


def execute_run(run_id: str) -> str:
    return executor.execute_run(run_id)


def fire_timer(step_id: str) -> str:
    return waits.fire_timer(step_id)


def recover_runs() -> int:
    return recovery.recover_stale_runs()


def deliver_webhook(delivery_id: str) -> str:
    return webhooks.deliver(delivery_id)


def fire_due_schedules() -> int:
    from loops.schedules import fire_due_schedules

    return fire_due_schedules()
