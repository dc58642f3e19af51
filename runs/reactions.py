"""What follows a run's status change, once the transaction that made it commits: the run that
started it with step.run_loop carries on when it ends, and webhooks subscribed to the new
status are queued. Every change of runs.state that callers hand here reacts exactly once."""

from django.db import transaction

from runs import state, webhooks
from runs.models import ENDED_STATUSES, Run, RunStatus, Step, StepStatus
from runs.state import Change


def after(change: Change | None) -> None:
    """React to `change` after commit (at once outside a transaction)."""
    if change is not None:
        transaction.on_commit(lambda: react(change))


def after_all(changes: list[Change]) -> None:
    if changes:
        transaction.on_commit(lambda: webhooks.queue_deliveries_of(changes))


def react(change: Change) -> None:
    if change.status in ENDED_STATUSES and change.parent_step_id:
        _parent_carries_on(change)
    has_webhooks = change.has_webhooks
    if has_webhooks is None:
        has_webhooks = webhooks.organization_has_webhooks(change.organization_id)
    if has_webhooks:
        webhooks.queue_deliveries_of([change])


def _parent_carries_on(change: Change) -> None:
    """A child run ended: the step.run_loop step waiting for it takes its output or error."""
    with transaction.atomic():
        step = Step.objects.filter(pk=change.parent_step_id).first()
        if step is None:
            return
        state.lock_run(step.run_id)
        child = Run.objects.only("status", "output", "error_message").get(pk=change.run_id)
        if child.status == RunStatus.SUCCEEDED:
            woken = state.step_resolve(step, status=StepStatus.SUCCEEDED, output=child.output)
        else:
            message = child.error_message or f"The child run {child.pk} was {child.status}"
            error = {"message": message, "type": "ChildRunFailed", "childRunId": child.pk}
            woken = state.step_resolve(step, status=StepStatus.FAILED, error=error)
        after(woken)
