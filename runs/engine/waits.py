"""The steps that may suspend a run: sleep, event, a person's answer or approval, a facial
scan, a child run. Each handler records its step (runs.state) and answers the program: the
step's result when it is already there, or "suspend" (the execution ends; whatever resolves
the wait later wakes the run, and timers are fired by runs.clock)."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from loops.access import loop_lookup_field
from loops.models import Loop
from loops_project.errors import DomainError
from runs import dispatch, inbox, reactions, rules, state
from runs.models import Run, RunEvent, ScanRequest, StepStatus, TimerKind, TriggerType

WAIT_KINDS = {"sleep", "event", "input", "approval", "scan", "child"}
SUSPEND = {"suspend": True}


def _seconds(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("timeout must be a number of seconds >= 0")
    return float(value)


def _cap(seconds: float) -> float:
    return min(seconds, settings.LOOPS_MAX_WAIT_SECONDS)


def _resolved(status: str, output=None, error=None) -> dict:
    return {"saved": {"status": status, "output": output, "error": error}}


def handle_wait(execution, message: dict) -> dict:
    kind = message.get("kind")
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    key = message.get("key")
    if kind not in WAIT_KINDS or not isinstance(key, str):
        return {"limit": "unknown wait"}
    existing = execution.steps.get(key)
    if existing is not None and existing.status == StepStatus.WAITING:
        return SUSPEND  # a repeated execution finds the same wait still open
    stop = execution.stop_reply()
    if stop is not None and (stop.get("cancelled") or existing is None):
        return stop
    try:
        return WAIT_HANDLERS[kind](execution, message, params)
    except ValueError as exc:
        error = {"message": str(exc), "type": "ValueError"}
        execution.open_step(message, kind=kind, status=StepStatus.FAILED, error=error)
        return _resolved(StepStatus.FAILED, error=error)


def _suspend(execution, message, *, kind: str, pending: dict, timeout=None, input=None,
             wake_at=None, person: dict | None = None) -> dict:  # fmt: skip
    """Open the waiting step; it ends at `wake_at`, or times out after `timeout` seconds. A
    wait for a person (`person`: _person()) is also an inbox item (runs.inbox), with a timer
    for its reminder or escalation if it has one (runs.approvals)."""
    now = timezone.now()
    deadline = wake_at
    if deadline is None and timeout is not None:
        deadline = now + timedelta(seconds=_cap(timeout))
    step_id = execution.open_step(
        message, kind=kind, status=StepStatus.WAITING, input=input, wake_at=deadline,
        started_at=now,
    )  # fmt: skip
    if step_id is None:
        return {"cancelled": True}
    overdue_at = None
    if person is not None:
        pending = {**pending, "stepId": step_id, "since": inbox.stamp(now),
                   "assignees": person["assignees"]}  # fmt: skip
        afters = [person[a] for a in ("remindAfter", "escalateAfter") if person[a] is not None]
        if afters:
            overdue_at = now + timedelta(seconds=_cap(min(afters)))
            pending["overdueAt"] = inbox.stamp(overdue_at)
    state.run_waits_for(
        execution.run.pk, {"stepName": message.get("name"), **pending}, execution.owner
    )
    if deadline is not None:
        dispatch.set_timer(TimerKind.STEP, step_id, deadline)
    if overdue_at is not None:
        dispatch.set_timer(TimerKind.APPROVAL, step_id, overdue_at)
    return SUSPEND


def _after(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0")
    return float(min(value, settings.LOOPS_MAX_WAIT_SECONDS))


def _person(execution, params: dict) -> dict:
    """step.ask's and step.approve's assignee, remind_after and escalate_after, checked:
    ValueError naming the argument (the step fails with it)."""
    assignees = inbox.parse_assignees(params.get("assignee"))
    strangers = inbox.unknown_users(execution.run.organization_id, assignees)
    if strangers:
        raise ValueError(f"assignee: no member named '{strangers[0]}' in this organization")
    return {
        "assignees": assignees,
        "remindAfter": _after("remind_after", params.get("remind_after")),
        "escalateAfter": _after("escalate_after", params.get("escalate_after")),
    }


def _with_person(step_input: dict, person: dict) -> dict:
    """The waiting step's input with its assignees and reminder times, where it has them."""
    extra = {"assignees": person["assignees"]} if person["assignees"] else {}
    extra.update({k: person[k] for k in ("remindAfter", "escalateAfter") if person[k] is not None})
    return {**step_input, **extra}


def wait_sleep(execution, message, params):
    if params.get("until") is not None:
        until = parse_datetime(str(params["until"]))
        if until is None or until.tzinfo is None:
            raise ValueError("sleep_until needs an ISO 8601 time with a time zone")
    else:
        seconds = _seconds(params.get("seconds"))
        until = timezone.now() + timedelta(seconds=_cap(seconds or 0))
    until = min(until, timezone.now() + timedelta(seconds=settings.LOOPS_MAX_WAIT_SECONDS))
    if until <= timezone.now():
        execution.open_step(
            message, kind="sleep", status=StepStatus.SUCCEEDED, input={"until": until.isoformat()},
            finished_at=timezone.now(), duration_ms=0,
        )  # fmt: skip
        return _resolved(StepStatus.SUCCEEDED)
    return _suspend(
        execution, message, kind="sleep", pending={"kind": "sleep", "until": until.isoformat()},
        input={"until": until.isoformat()}, wake_at=until,
    )  # fmt: skip


def wait_event(execution, message, params):
    event_type = str(params.get("event_type") or "")[:200]
    if not event_type:
        raise ValueError("wait_for_event needs an event type")
    timeout = _seconds(params.get("timeout"))
    with transaction.atomic():
        state.lock_run(execution.run.pk)
        event = (
            RunEvent.objects.filter(run_id=execution.run.pk, type=event_type, consumed_by=None)
            .order_by("created_at", "id")
            .first()
        )
        if event is not None:
            now = timezone.now()
            step_id = execution.open_step(
                message, kind="event", status=StepStatus.SUCCEEDED,
                input={"eventType": event_type}, output=event.payload, finished_at=now,
                duration_ms=0,
            )  # fmt: skip
            RunEvent.objects.filter(pk=event.pk).update(consumed_by_id=step_id)
            return _resolved(StepStatus.SUCCEEDED, output=event.payload)
        return _suspend(
            execution, message, kind="event", pending={"kind": "event", "eventType": event_type},
            timeout=timeout, input={"eventType": event_type, "timeout": timeout},
        )  # fmt: skip


def wait_input(execution, message, params):
    prompt = str(params.get("prompt") or "")[:5000]
    timeout = _seconds(params.get("timeout"))
    person = _person(execution, params)
    return _suspend(
        execution, message, kind="input", pending={"kind": "input", "prompt": prompt},
        timeout=timeout, input=_with_person({"prompt": prompt}, person), person=person,
    )  # fmt: skip


def wait_approval(execution, message, params):
    prompt = str(params.get("prompt") or "")[:5000]
    pending = {
        "kind": "approval",
        "prompt": prompt,
        "tool": params.get("tool"),
        "toolInput": params.get("tool_input"),
    }
    step_input = {**pending, "onReject": params.get("on_reject", "stop")}
    del step_input["kind"]
    timeout = _seconds(params.get("timeout"))
    person = _person(execution, params)
    return _suspend(
        execution, message, kind="approval", pending=pending, timeout=timeout,
        input=_with_person(step_input, person), person=person,
    )  # fmt: skip


def wait_scan(execution, message, params):
    timeout = _seconds(params.get("timeout"))
    deadline = timezone.now() + timedelta(seconds=_cap(timeout)) if timeout is not None else None
    subject = params.get("subject")
    step_id = execution.open_step(
        message, kind="scan", status=StepStatus.WAITING, input={"subject": subject},
        wake_at=deadline,
    )  # fmt: skip
    if step_id is None:
        return {"cancelled": True}
    scan = ScanRequest.objects.create(
        organization_id=execution.run.organization_id,
        run_id=execution.run.pk,
        step_id=step_id,
        subject=subject,
    )
    execution.close_step(
        message["key"],
        {"status": StepStatus.WAITING, "input": {"subject": subject, "scanId": scan.pk,
                                                 "link": scan.get_absolute_url()}},
    )  # fmt: skip
    state.run_waits_for(
        execution.run.pk,
        {"stepName": message.get("name"), "kind": "scan", "scanId": scan.pk},
        execution.owner,
    )
    if deadline is not None:
        dispatch.set_timer(TimerKind.STEP, step_id, deadline)
    return SUSPEND


def wait_child(execution, message, params):
    """step.run_loop: a run of another loop of the organization, pinned to its active version;
    the step waits for it (runs.reactions resolves the step when it ends)."""
    ident = str(params.get("loop") or "")
    loop = Loop.objects.filter(
        organization_id=execution.run.organization_id, **{loop_lookup_field(ident): ident}
    ).first()
    depth, limit = execution.run.depth + 1, settings.LOOPS_MAX_CHILD_DEPTH
    body = params.get("body")
    error = None
    if loop is None:
        error = {"message": f"No loop '{ident}' in this organization", "type": "ChildRunFailed"}
    elif depth > limit:
        error = {
            "message": f"step.run_loop cannot start a run {depth} levels deep: runs started by "
            f"step.run_loop nest at most {limit} deep (LOOPS_MAX_CHILD_DEPTH)",
            "type": "ChildRunFailed",
        }
    else:
        try:  # before the step records the body: it must be JSON Loops can store
            rules.check_input(body, field="body")
            rules.check_triggerable(loop)
        except DomainError as exc:
            error = {"message": exc.message, "type": "ChildRunFailed"}
    if error is not None:
        execution.open_step(message, kind="child", status=StepStatus.FAILED, error=error)
        return _resolved(StepStatus.FAILED, error=error)
    step_id = execution.open_step(
        message, kind="child", status=StepStatus.WAITING, input={"loop": loop.slug, "body": body}
    )
    if step_id is None:
        return {"cancelled": True}
    child = Run(
        organization_id=loop.organization_id,
        loop_id=loop.pk,
        version_id=loop.active_version_id,
        trigger_type=TriggerType.SYSTEM,
        input=body,
        parent_step_id=step_id,
        depth=depth,
        task_id=dispatch.new_execution_name(),
    )
    reactions.after(state.run_insert(child))
    execution.close_step(
        message["key"], {"status": StepStatus.WAITING, "metadata": {"childRunId": child.pk}}
    )
    state.run_waits_for(
        execution.run.pk,
        {"stepName": message.get("name"), "kind": "child", "childRunId": child.pk},
        execution.owner,
    )
    return SUSPEND


WAIT_HANDLERS = {
    "sleep": wait_sleep,
    "event": wait_event,
    "input": wait_input,
    "approval": wait_approval,
    "scan": wait_scan,
    "child": wait_child,
}
