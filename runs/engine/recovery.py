"""Taking up runs whose worker died (lease expired) or whose queued task was lost."""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from runs import queue
from runs.models import Run, RunStatus
from runs.queue import enqueue_execution

LOST_PENDING_AFTER = timedelta(minutes=10)


def recover_stale_runs(limit: int = 1000) -> int:
    """Queue an execution for every run that should be running but is not.

    The claim in the executor is conditional, so a run queued twice still runs once.
    """
    now = timezone.now()
    lost = Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    # A pending run is only lost if nothing is queued: in a backlog it is merely waiting.
    if queue._broker().queue_size() == 0:
        lost |= Q(status=RunStatus.PENDING, created_at__lt=now - LOST_PENDING_AFTER)
    stale = Run.objects.filter(lost).values_list("pk", "task_id")[:limit]
    count = 0
    for run_id, task_id in stale:
        enqueue_execution(run_id, task_id or None)
        count += 1
    return count
