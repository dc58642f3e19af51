"""What operators and the clock do with the inbox: decide many approvals at once, and remind
or escalate a wait for a person that has gone on too long (step.ask/step.approve's
`remind_after` and `escalate_after`)."""

from datetime import timedelta

from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Organization
from loops_project.errors import DomainError, Invalid
from runs import dispatch, state, webhooks
from runs.inbox import item_payload, waiting_since
from runs.models import Run, RunStatus, Step, StepStatus, TimerKind
from runs.services import run_respond

DECISIONS = ("approve", "reject")
MAX_DECISIONS = 1000
# What the timer of a wait for a person does next, in the order of their times.
STAGES = (("reminder", "remindAfter", "reminded"), ("escalated", "escalateAfter", "escalated"))


def approvals_decide(*, organization: Organization, run_ids: list[str], action: str,
                     reason: str | None = None, actor: Actor) -> dict:  # fmt: skip
    """Approve or reject each listed run's approval with one reason, each in a transaction of
    its own with its audit record (runs.services.run_respond). A run that is not the
    organization's, not waiting for an approval, or that this actor may not answer is skipped
    with the reason, not an error. Returns {"decided": n, "skipped": [{"runId", "reason"}]}."""
    if action not in DECISIONS:
        raise Invalid("action must be approve or reject", code="invalid_action",
                      details={"field": "action"})  # fmt: skip
    wanted = list(dict.fromkeys(run_ids))
    if not wanted or len(wanted) > MAX_DECISIONS:
        raise Invalid(f"runIds must list 1 to {MAX_DECISIONS} runs", details={"field": "runIds"})
    runs = Run.objects.for_org(organization).only("id", "status", "pending").in_bulk(wanted)
    decided, skipped = 0, []
    for run_id in wanted:
        run = runs.get(run_id)
        why = _not_decidable(run)
        if why is None:
            try:
                run_respond(run=run, action=action, reason=reason, actor=actor)
            except DomainError as exc:
                why = exc.message
        if why is None:
            decided += 1
        else:
            skipped.append({"runId": run_id, "reason": why})
    return {"decided": decided, "skipped": skipped}


def _not_decidable(run: Run | None) -> str | None:
    if run is None:
        return "No such run."
    kind = (run.pending or {}).get("kind")
    if run.status != RunStatus.WAITING or kind not in ("input", "approval"):
        return f"The run is not waiting for an approval (it is {run.status})."
    if kind == "input":
        return "The run waits for an answer to a question, not for an approval."
    return None


def _next_stage(step_input: dict, pending: dict) -> tuple[str, float] | None:
    """The reminder or escalation still to come, earliest first: (event, seconds after the
    wait began)."""
    due = [
        (step_input[after], order, event)
        for order, (event, after, done) in enumerate(STAGES)
        if step_input.get(after) is not None and not pending.get(done)
    ]
    if not due:
        return None
    seconds, _, event = min(due)
    return event, seconds


def approval_timer_fire(step_id: str) -> str | None:
    """The timer of a wait for a person (runs.clock, in a transaction): the next of its
    reminder and escalation goes out as a webhook event (`approval.reminder`,
    `approval.escalated`) with the inbox item, the item is marked overdue, and the timer is
    set for the other one if it is still to come. Nothing when the wait has ended (decided,
    timed out, cancelled). Returns the event sent."""
    step = Step.objects.filter(pk=step_id).only("run_id").first()
    if step is None:
        return None
    run = state.lock_run(step.run_id)
    step = Step.objects.get(pk=step_id)
    pending = (run.pending or {}) if run is not None else {}
    if (
        step.status != StepStatus.WAITING
        or run.status != RunStatus.WAITING
        or pending.get("stepId") != step.pk
    ):
        return None
    step_input = step.input or {}
    stage = _next_stage(step_input, pending)
    if stage is None:
        return None
    event, _ = stage
    done = next(flag for name, _, flag in STAGES if name == event)
    pending = {**pending, "overdue": True, done: True}
    state.run_waits_for(run.pk, pending)
    run.pending = pending
    webhooks.queue_event(run=run, event=f"approval.{event}", data=item_payload(run))
    following = _next_stage(step_input, pending)
    if following is not None:
        since = waiting_since(pending) or step.started_at
        due = max(since + timedelta(seconds=following[1]), timezone.now())
        dispatch.set_timer(TimerKind.APPROVAL, step.pk, due)
    return f"approval.{event}"
