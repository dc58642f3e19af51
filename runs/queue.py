"""Enqueueing executions on django-q2, always after the transaction commits."""

import uuid
from functools import cache

from django.db import transaction
from django_q.brokers import get_broker
from django_q.tasks import async_task

EXECUTE_TASK = "runs.tasks.execute_run"
EXECUTE_MANY_TASK = "runs.tasks.execute_runs"


@cache
def _broker():
    # async_task would otherwise build a new broker (and connection) on every call.
    return get_broker()


def new_task_id() -> str:
    return uuid.uuid4().hex


def enqueue_execution(run_id: str, task_id: str | None = None) -> str:
    """Queue an execution of the run once the current transaction commits."""
    task_id = task_id or new_task_id()
    transaction.on_commit(
        lambda: async_task(EXECUTE_TASK, run_id, task_name=task_id, broker=_broker())
    )
    return task_id


def enqueue_executions(run_ids: list[str], chunk: int = 100) -> None:
    """Queue many runs, a chunk of them per task (one task per run caps throughput)."""

    def push():
        broker = _broker()
        for start in range(0, len(run_ids), chunk):
            async_task(EXECUTE_MANY_TASK, run_ids[start : start + chunk], broker=broker)

    transaction.on_commit(push)


def enqueue_task(func: str, *args, **kwargs) -> None:
    transaction.on_commit(lambda: async_task(func, *args, broker=_broker(), **kwargs))
