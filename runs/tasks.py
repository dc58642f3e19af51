"""django-q2 task entry points: they take ids, and call the engine or a service."""

from runs import webhooks
from runs.engine import executor, recovery, waits


def execute_run(run_id: str) -> str:
    return executor.execute_run(run_id)


def execute_runs(run_ids: list[str]) -> int:
    """A chunk of a batch: executed one after the other by one worker."""
    return sum(1 for run_id in run_ids if executor.execute_run(run_id) != "not claimed")


def fire_timer(step_id: str) -> str:
    return waits.fire_timer(step_id)


def recover_runs() -> int:
    return recovery.recover_stale_runs()


def deliver_webhook(delivery_id: str) -> str:
    return webhooks.deliver(delivery_id)


def fire_due_schedules() -> int:
    from loops.schedules import fire_due_schedules

    return fire_due_schedules()
