"""Writes of runs: trigger, respond, events, scans, cancel, resume, restart, batches. Each
checks what it is given, makes its change through runs.state and hands the change to
runs.reactions."""

import json
from contextlib import nullcontext
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.models import ActorType, ApiToken
from loops.models import Loop
from loops.validation import validate_code
from loops_project.errors import Conflict, DomainError, Forbidden, Invalid
from runs import dispatch, inbox, reactions, state
from runs.batches import analyze_if_outgrown, insert_runs, new_run_ids
from runs.models import (
    Batch,
    Run,
    RunEvent,
    RunMode,
    RunStatus,
    ScanRequest,
    ScanStatus,
    Step,
    StepStatus,
    TriggerType,
    Webhook,
)
from runs.rules import check_input, check_triggerable

IDEMPOTENCY_WINDOW = timedelta(hours=24)


def _idempotent_run(loop: Loop, key: str) -> Run | None:
    """The run an Idempotency-Key already made for this loop in the last 24 hours."""
    if len(key) > 200:
        raise Invalid(
            "Idempotency-Key is at most 200 characters", details={"field": "idempotencyKey"}
        )
    # Keyed triggers of one loop take turns, so two at once never both create a run.
    Loop.objects.select_for_update().filter(pk=loop.pk).first()
    return (
        Run.objects.filter(
            loop=loop, idempotency_key=key, created_at__gte=timezone.now() - IDEMPOTENCY_WINDOW
        )
        .order_by("created_at")
        .first()
    )


def run_trigger(
    *,
    loop: Loop,
    input,
    trigger_type: str,
    mode: str = RunMode.LIVE,
    user=None,
    token: ApiToken | None = None,
    test_code: str | None = None,
    idempotency_key: str | None = None,
    parent_step_id: str | None = None,
    depth: int = 0,
) -> Run:
    """Save a pending run and queue its execution (visible to workers once committed).

    A live run is pinned to the loop's active version; a test run executes draft code.
    With an idempotency key already used for this loop within 24 hours, the first run is
    returned and nothing is created. A child run (step.run_loop) names the step that waits
    for it and its depth below the first run, written with the run so that its own
    executions see them at once.
    """
    # A keyed trigger looks for the key's run and creates its own in one transaction (holding
    # the loop's row); an unkeyed one needs no transaction of its own: on PostgreSQL with the
    # ORM broker, the run and its worker's turn are one statement (runs.state.run_insert).
    with transaction.atomic() if idempotency_key else nullcontext():
        if idempotency_key:
            existing = _idempotent_run(loop, idempotency_key)
            if existing is not None:
                return existing
        check_input(input)
        if mode == RunMode.TEST:
            validate_code(test_code or "", loop.organization_id)
            version = None
        else:
            check_triggerable(loop)
            version = loop.active_version
        run = Run(
            organization_id=loop.organization_id,
            loop=loop,
            version=version,
            test_code=test_code or "",
            trigger_type=TriggerType(trigger_type),
            mode=RunMode(mode),
            triggered_by_user=user if getattr(user, "is_authenticated", False) else None,
            triggered_by_token=token,
            input=input,
            idempotency_key=idempotency_key,
            parent_step_id=parent_step_id,
            depth=depth,
            task_id=dispatch.new_execution_name(),
        )
        reactions.after(state.run_insert(run))
    return run


# --- Run control --------------------------------------------------------------------------------

PERSON_KINDS = {"input", "approval"}
ACTIONS = {"input": "input", "approve": "approval", "reject": "approval"}
ANSWER_AUDIT = {"input": "input.answer", "approve": "approval.approve", "reject": "approval.reject"}
AUDITED_ANSWER_CHARS = 2000  # a longer answer is audited by its start


def _waiting_step(run: Run, kind: str) -> Step | None:
    return (
        Step.objects.filter(run=run, status=StepStatus.WAITING, kind=kind)
        .order_by("-order")
        .first()
    )


@transaction.atomic
def run_respond(*, run: Run, action: str, value=None, has_value: bool = False,
                reason: str | None = None, actor: Actor | None = None) -> Run:  # fmt: skip
    """Answer a run waiting for a person: an `ask` answer, or an approval decision, audited
    (`input.answer`, `approval.approve`, `approval.reject`). A wait with assignees takes a
    person's answer only from them or an admin (runs.inbox.refusal: Forbidden otherwise); an
    API token acts for its organization and may answer any."""
    run = state.lock_run(run.pk)
    pending = run.pending or {}
    if run.status != RunStatus.WAITING or pending.get("kind") not in PERSON_KINDS:
        raise Conflict("This run is not waiting for a person.", code="not_waiting_for_person")
    if action not in ACTIONS:
        raise DomainError(
            "action must be one of: input, approve, reject", code="invalid_action",
            details={"field": "action"},
        )  # fmt: skip
    if ACTIONS[action] != pending["kind"]:
        expected = "input" if pending["kind"] == "input" else "approve or reject"
        raise DomainError(
            f"This run waits for {pending['kind']}; the action must be {expected}.",
            code="action_mismatch", details={"field": "action"},
        )  # fmt: skip
    if action == "input" and not has_value:
        raise DomainError("input is required to answer a question.", code="input_required",
                          details={"field": "input"})  # fmt: skip
    step = _waiting_step(run, pending["kind"])
    if step is None:
        raise Conflict("This run is not waiting for a person.", code="not_waiting_for_person")
    check_may_answer(run, pending, actor)
    details = {"stepId": step.pk, "stepName": step.name}
    if action == "input":
        check_input(value, field="input")
        answer = json.dumps(value, ensure_ascii=False)
        details["answer"] = value if len(answer) <= AUDITED_ANSWER_CHARS else answer[:200] + "…"
        reactions.after(state.step_resolve(step, status=StepStatus.SUCCEEDED, output=value))
    else:
        by = actor.name if actor is not None else None
        decision = {"approved": action == "approve", "reason": reason, "by": by}
        status = StepStatus.SUCCEEDED if action == "approve" else StepStatus.REJECTED
        details["reason"] = reason
        reactions.after(state.step_resolve(step, status=status, output=decision))
    record(organization=run.organization_id, actor=actor, action=ANSWER_AUDIT[action],
           object_type="run", object_id=run.pk, details=details)  # fmt: skip
    run.refresh_from_db()
    return run


def check_may_answer(run: Run, pending: dict | None, actor: Actor | None) -> None:
    """Forbidden unless the member acting may answer what the run waits for (its assignees and
    admins: runs.inbox.refusal). A token acts for its organization; None is an internal call."""
    if actor is not None and actor.type == ActorType.USER:
        role = inbox.member_role(run.organization_id, actor.id)
        refused = inbox.refusal(pending, role=role, username=actor.name)
        if refused:
            raise Forbidden(refused, code="not_assignee")


@transaction.atomic
def run_send_event(*, run: Run, type: str, payload=None) -> RunEvent:
    """Post an event to a run: it resumes a matching wait, or is kept for a later one."""
    run = state.lock_run(run.pk)
    if run.is_ended:
        raise Conflict(f"The run has ended ({run.status}).", code="run_ended")
    check_input(payload, field="payload")
    event = RunEvent.objects.create(run=run, type=type, payload=payload)
    if run.status == RunStatus.WAITING and (run.pending or {}).get("eventType") == type:
        step = _waiting_step(run, "event")
        if step is not None:
            RunEvent.objects.filter(pk=event.pk).update(consumed_by=step)
            reactions.after(state.step_resolve(step, status=StepStatus.SUCCEEDED, output=payload))
    return event


@transaction.atomic
def scan_submit_result(*, scan: ScanRequest, result) -> ScanRequest:
    state.lock_run(scan.run_id)
    scan = ScanRequest.objects.select_related("step").get(pk=scan.pk)
    if scan.status != ScanStatus.PENDING:
        raise Conflict(f"This scan already has a result ({scan.status}).", code="scan_closed")
    if not isinstance(result, dict) or not result:
        raise Invalid("The scan result must be a JSON object of measures.", code="invalid_result",
                      details={"field": "body"})  # fmt: skip
    check_input(result, field="body")
    ScanRequest.objects.filter(pk=scan.pk).update(
        status=ScanStatus.COMPLETED, result=result, completed_at=timezone.now()
    )
    reactions.after(state.step_resolve(scan.step, status=StepStatus.SUCCEEDED, output=result))
    scan.refresh_from_db()
    return scan


def _audit(actor: Actor | None, run: Run, action: str, details: dict) -> None:
    if actor is not None:
        record(organization=run.organization_id, actor=actor, action=action,
               object_type="run", object_id=run.pk, details=details)  # fmt: skip


@transaction.atomic
def run_cancel(*, run: Run, actor: Actor | None = None) -> Run:
    """Cancel a pending, running or waiting run, and every run below it that step.run_loop
    started (children, their children …) and that has not ended. A running execution stops
    at its next step boundary (it finds the run no longer running)."""
    run = state.lock_run(run.pk)
    if run.is_ended:
        raise Conflict(f"The run has already ended ({run.status}).", code="run_ended")
    _audit(actor, run, "run.cancel", {"before": run.status, "after": RunStatus.CANCELLED})
    reactions.after(state.run_cancel(run))
    # Parents before children: a child's end resumes its parent, which is cancelled already.
    for child_id in _descendant_ids(run.pk):
        child = state.lock_run(child_id)
        if child is not None and not child.is_ended:
            reactions.after(state.run_cancel(child))
    run.refresh_from_db()
    return run


def _descendant_ids(run_id: str) -> list[str]:
    """The runs below a run, level by level (one query per level; LOOPS_MAX_CHILD_DEPTH
    bounds the levels)."""
    found, level = [], [run_id]
    while level:
        level = list(
            Run.objects.filter(parent_step__run_id__in=level)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)
        )
        found += level
    return found


@transaction.atomic
def run_resume(*, run: Run, actor: Actor | None = None) -> Run:
    """Continue a failed or cancelled run on its pinned version from its last checkpoint."""
    run = state.lock_run(run.pk)
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise Conflict(
            f"Only a failed or cancelled run can be resumed; this one is {run.status}.",
            code="not_resumable",
        )
    _audit(actor, run, "run.resume", {"before": run.status, "attempt": run.attempt + 1})
    reactions.after(state.run_resume(run))
    run.refresh_from_db()
    return run


def run_restart(*, run: Run, user=None, token: ApiToken | None = None,
                trigger_type: str | None = None, actor: Actor | None = None) -> Run:  # fmt: skip
    """A new run with the same input on the loop's currently active version."""
    loop = Loop.objects.select_related("active_version").get(pk=run.loop_id)
    with transaction.atomic():
        new = run_trigger(
            loop=loop,
            input=run.input,
            trigger_type=trigger_type or run.trigger_type,
            mode=run.mode,
            user=user,
            token=token,
            test_code=run.test_code if run.mode == RunMode.TEST else None,
        )
        Run.objects.filter(pk=new.pk).update(restarted_from=run)
        new.restarted_from = run
        _audit(actor, run, "run.restart", {"newRun": new.pk})
    return new


@transaction.atomic
def run_trigger_batch(
    *, loop: Loop, inputs: list, trigger_type: str, user=None, token: ApiToken | None = None
) -> Batch:
    """Create the runs of a batch in bulk and queue them in chunks, all before answering.

    Each input is serialized once, for the size check and for the insert (COPY on PostgreSQL).
    The runs wait in the queue (the runs table) and start in fair turns with everyone else's.
    """
    check_triggerable(loop)
    texts = [check_input(item, field=f"inputs[{index}]") for index, item in enumerate(inputs)]
    batch = Batch.objects.create(organization_id=loop.organization_id, loop=loop, count=len(inputs))
    template = Run(
        organization_id=loop.organization_id,
        loop_id=loop.pk,
        version_id=loop.active_version_id,
        trigger_type=TriggerType(trigger_type),
        mode=RunMode.LIVE,
        triggered_by_user=user if getattr(user, "is_authenticated", False) else None,
        triggered_by_token=token,
        batch_id=batch.pk,
        created_at=timezone.now(),
        queue=dispatch.queue_key(),
    )
    run_ids = new_run_ids(len(inputs))
    insert_runs(template, run_ids, texts)
    transaction.on_commit(lambda: analyze_if_outgrown(len(run_ids)))
    for _ in range(dispatch.turns_wanted()):
        dispatch.wake_workers()
    if Webhook.objects.filter(organization_id=loop.organization_id, active=True).exists():
        reactions.after_all(
            [state.Change(run_id, loop.organization_id, loop.pk, None, RunStatus.PENDING)
             for run_id in run_ids]
        )  # fmt: skip
    return batch
