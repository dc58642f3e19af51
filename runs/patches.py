"""Patch and continue: an operator retries a failed or cancelled run from one of its steps,
completes a failed or waiting step with an output of their own, wakes a sleeping step now, or
sends the event a run waits for. Each change is made through runs.state and recorded in the
audit log in the same transaction; a refused one changes and records nothing.

A step's checkpoints are ordered by `Step.order` (the order the run first reached them), so
"a step and every later one" is every step of a higher order, and whatever was recorded under
those (a step.each's iterations). Runs that dropped steps had started (step.run_loop) are kept
as they are, detached; one still going is cancelled, since no step waits for it any more.
"""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor, record
from loops_project.errors import Conflict, Invalid, NotFound, TooLarge
from runs import dispatch, reactions, services, state
from runs.models import (
    ENDED_STATUSES,
    Run,
    RunEvent,
    RunStatus,
    ScanRequest,
    ScanStatus,
    Step,
    StepKind,
    StepStatus,
    TimerKind,
)
from runs.rules import check_input

RETRYABLE = (RunStatus.FAILED, RunStatus.CANCELLED)
# Waiting steps a timer ends by itself: a sleep, and a step.do waiting for its retry's delay.
TIMED = (StepKind.SLEEP, StepKind.DO)
PERSON_STEP_KINDS = (StepKind.INPUT, StepKind.APPROVAL)
EVENT_TYPE_MAX = 200


def _locked(run: Run, step: Step) -> tuple[Run, Step]:
    """The run, locked for the rest of the transaction, and the step as it is now."""
    run = state.lock_run(run.pk)
    current = Step.objects.filter(run=run, pk=step.pk).first() if run is not None else None
    if current is None:
        raise NotFound("No such step.")
    return run, current


def _steps_from(run: Run, step: Step, *, including: bool) -> list[str]:
    """The ids of the steps recorded after `step` (and `step` itself if `including`), with
    everything nested under them."""
    rows = list(Step.objects.filter(run=run).values_list("pk", "order", "parent_id"))
    dropped = {pk for pk, order, _ in rows if order > step.order or (including and pk == step.pk)}
    while True:
        nested = {pk for pk, _, parent in rows if parent in dropped and pk not in dropped}
        if not nested:
            return sorted(dropped)
        dropped |= nested


def _stop_child_runs(step_ids: list[str]) -> list[str]:
    """Cancel the runs these steps started that have not ended (and the runs below them)."""
    going = Run.objects.filter(parent_step_id__in=step_ids).exclude(status__in=ENDED_STATUSES)
    cancelled = []
    for child in going.order_by("created_at", "pk"):
        try:
            services.run_cancel(run=child)
        except Conflict:  # it ended meanwhile
            continue
        cancelled.append(child.pk)
    return cancelled


def _audit(run: Run, actor: Actor, action: str, object_type: str, object_id: str,
           details: dict) -> None:  # fmt: skip
    record(organization=run.organization_id, actor=actor, action=action,
           object_type=object_type, object_id=object_id, details=details)  # fmt: skip


@transaction.atomic
def run_retry_from(*, run: Run, step: Step, actor: Actor) -> Run:
    """A failed or cancelled run forgets `step` and every later step, and resumes on its
    pinned version: the steps before it replay their saved results (a failed one runs again,
    as on any resume), `step` and the rest run again."""
    run, step = _locked(run, step)
    if run.status not in RETRYABLE:
        raise Conflict(
            f"Only a failed or cancelled run can be retried from a step; this one is {run.status}.",
            code="not_retryable",
        )
    dropped = _steps_from(run, step, including=True)
    cancelled = _stop_child_runs(dropped)
    state.steps_forget(run, dropped)
    reactions.after(state.run_resume(run))
    _audit(run, actor, "run.retry_from", "run", run.pk, {
        "stepId": step.pk, "stepName": step.name, "statusBefore": run.status,
        "droppedSteps": len(dropped), "attempt": run.attempt + 1, "cancelledRuns": cancelled,
    })  # fmt: skip
    run.refresh_from_db()
    return run


def check_output(output) -> None:
    """An operator's output for a step: JSON Loops can store, within the limits of a run's
    input (LOOPS_MAX_INPUT_BYTES) and of a step's output."""
    text = check_input(output, field="output")
    size, limit = len(text.encode()), settings.LOOPS_MAX_STEP_OUTPUT_BYTES
    if size > limit:
        raise TooLarge(f"output is {size} bytes; the limit is {limit} bytes",
                       code="input_too_large", details={"field": "output"})  # fmt: skip


def _not_completable(run: Run, step: Step) -> Conflict:
    if step.kind == StepKind.EACH:
        why = (f"“{step.name}” is a step.each, whose steps run again on every replay: "
               "complete one of the steps inside it instead.")  # fmt: skip
    elif step.status == StepStatus.FAILED:
        why = (f"“{step.name}” failed, but the run is {run.status}: a failed step can be "
               "completed once its run has failed or been cancelled.")  # fmt: skip
    elif step.status == StepStatus.WAITING:
        why = f"“{step.name}” waits, but the run is {run.status}; try again in a moment."
    else:
        why = f"Only a failed or waiting step can be completed; “{step.name}” {step.shown_status}."
    return Conflict(why, code="not_completable")


@transaction.atomic
def step_complete(*, run: Run, step: Step, output, actor: Actor) -> Run:
    """The step takes `output` as if it had returned it, and the run goes on from there.

    A waiting step of a waiting run is resolved as an answer would resolve it (a child run it
    waits for is cancelled, a scan it waits for expires). A failed step of a failed or
    cancelled run succeeds with the output; the steps recorded after it are dropped (they
    followed from the failure) and the run resumes on its pinned version."""
    check_output(output)
    run, step = _locked(run, step)
    waiting = step.status == StepStatus.WAITING and run.status == RunStatus.WAITING
    failed = step.status == StepStatus.FAILED and run.status in RETRYABLE
    if step.kind == StepKind.EACH or not (waiting or failed):
        raise _not_completable(run, step)
    before = {"status": step.shown_status, "error": step.error, "runStatus": run.status}
    if step.kind in PERSON_STEP_KINDS:
        # Completing a question or an approval answers it: only those who may answer it may,
        # whether it waits or failed (a cancelled run's wait fails, and its run has no
        # `pending` any more: the step keeps its assignees).
        wait = run.pending if waiting else {"kind": step.kind, **(step.input or {})}
        services.check_may_answer(run, wait, actor)
    if waiting:
        dropped = []
        ScanRequest.objects.filter(step=step, status=ScanStatus.PENDING).update(
            status=ScanStatus.EXPIRED
        )
        cancelled = _stop_child_runs([step.pk])
        reactions.after(state.step_resolve(step, status=StepStatus.SUCCEEDED, output=output))
    else:
        dropped = _steps_from(run, step, including=False)
        cancelled = _stop_child_runs(dropped)
        state.steps_forget(run, dropped)
        state.step_succeed_with(step, output)
        reactions.after(state.run_resume(run))
    _audit(run, actor, "step.complete", "step", step.pk, {
        "runId": run.pk, "stepName": step.name, "kind": step.kind, "before": before,
        "output": output, "droppedSteps": len(dropped), "cancelledRuns": cancelled,
    })  # fmt: skip
    run.refresh_from_db()
    return run


@transaction.atomic
def step_fire(*, run: Run, step: Step, actor: Actor) -> Run:
    """A sleeping step (or a step.do waiting for its retry's delay) wakes now: its timer is
    fired through the clock's own code (runs.state.step_time_up), due now."""
    run, step = _locked(run, step)
    if not (step.status == StepStatus.WAITING and step.kind in TIMED):
        what = "waits for something else" if step.status == StepStatus.WAITING else (
            f"is {step.shown_status}")  # fmt: skip
        raise Conflict(
            f"Only a sleeping step can be fired; “{step.name}” ({step.kind}) {what}.",
            code="not_sleeping",
        )
    if run.status != RunStatus.WAITING:
        raise Conflict(f"“{step.name}” sleeps, but the run is {run.status}; try again in a moment.",
                       code="not_sleeping")  # fmt: skip
    due = step.wake_at
    state.step_wake_at(step.pk, timezone.now())
    woken = state.step_time_up(step.pk)
    dispatch.clear_timer(TimerKind.STEP, step.pk)  # a retry's step goes on running, untimed
    reactions.after(woken)
    _audit(run, actor, "step.fire", "step", step.pk, {
        "runId": run.pk, "stepName": step.name, "kind": step.kind,
        "dueAt": due.isoformat() if due else None,
    })  # fmt: skip
    run.refresh_from_db()
    return run


@transaction.atomic
def run_event_send(*, run: Run, type: str, payload=None, actor: Actor) -> RunEvent:
    """Post an event to a run (runs.services.run_send_event: it resumes a matching wait, or is
    kept for a later one), recorded in the audit log."""
    if not isinstance(type, str) or not type.strip() or len(type) > EVENT_TYPE_MAX:
        raise Invalid(f"type must be 1 to {EVENT_TYPE_MAX} characters",
                      code="invalid_event_type", details={"field": "type"})  # fmt: skip
    event = services.run_send_event(run=run, type=type, payload=payload)
    event.refresh_from_db()
    _audit(run, actor, "run.event", "run", run.pk, {
        "eventId": event.pk, "type": type, "payload": payload,
        "consumed": event.consumed_by_id is not None,
    })  # fmt: skip
    return event
