"""django-q2 task entry points: they take ids (or nothing) and call the engine or a service."""

from runs import bulk, webhooks
from runs.engine import executor, turns


def work() -> int:
    """A turn to work: claim runs, fairest first, and execute them until none may start or
    the cluster stops (runs.engine.turns). Returns how many runs it executed."""
    return turns.work()


def execute_run(run_id: str) -> str:
    """One run by its id (a task queued by an earlier version of Loops, or by hand)."""
    return executor.execute_run(run_id)


def deliver_webhook(delivery_id: str) -> str:
    """One attempt of a delivery (a task queued by an earlier version of Loops: deliveries are
    now sent by the clusters' senders, runs.senders)."""
    return webhooks.deliver(delivery_id)


def bulk_work(job_id: str, token: str) -> None:
    """Work on a bulk job for a few seconds (runs.bulk), then hand on to a new task."""
    bulk.bulk_job_work(job_id=job_id, token=token)
