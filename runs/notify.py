"""What follows a run's status change: its parent run resumes, webhooks are delivered."""

from django.db import transaction

from runs.models import ENDED_STATUSES, Run, RunStatus, StepStatus


def run_status_changed(run_id: str, status: str) -> None:
    if status in ENDED_STATUSES:
        _resume_parent(run_id)
    from runs.webhooks import queue_deliveries

    queue_deliveries(run_id, status)


def _resume_parent(run_id: str) -> None:
    from runs.engine.waits import lock_run, resolve_step

    child = Run.objects.select_related("parent_step").filter(pk=run_id).first()
    if child is None or child.parent_step is None:
        return
    step = child.parent_step
    with transaction.atomic():
        lock_run(step.run_id)
        if child.status == RunStatus.SUCCEEDED:
            resolve_step(step, status=StepStatus.SUCCEEDED, output=child.output)
        else:
            message = child.error_message or f"The child run {child.pk} was {child.status}"
            error = {"message": message, "type": "ChildRunFailed", "childRunId": child.pk}
            resolve_step(step, status=StepStatus.FAILED, error=error)
