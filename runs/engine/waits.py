"""Waits: steps that suspend a run (sleep, event, person, approval, scan, child run), the
timers that end them, and waking a run when what it waits for arrives.

A run's row is locked (select_for_update) by every function here that resolves a wait or
suspends a run, so a result that arrives while the execution is still finishing is never
lost: whichever comes second sees the other's write.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.models import Schedule as QSchedule

from runs.models import Run, RunEvent, RunStatus, ScanRequest, ScanStatus, Step, StepStatus
from runs.queue import enqueue_execution, new_task_id

WAIT_KINDS = {"sleep", "event", "input", "approval", "scan", "child"}
FIRE_TIMER_TASK = "runs.tasks.fire_timer"


def _seconds(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("timeout must be a number of seconds >= 0")
    return float(value)


def _cap(seconds: float) -> float:
    return min(seconds, settings.LOOPS_MAX_WAIT_SECONDS)


def schedule_timer(step_id: str, when: datetime) -> None:
    """Fire runs.tasks.fire_timer(step_id) at `when` through django-q2's scheduler."""
    QSchedule.objects.update_or_create(
        name=f"timer:{step_id}",
        defaults={
            "func": FIRE_TIMER_TASK,
            "args": repr((step_id,)),
            "schedule_type": QSchedule.ONCE,
            "repeats": -1,
            "next_run": when,
        },
    )


def _resolved(status: str, output=None, error=None) -> dict:
    return {"saved": {"status": status, "output": output, "error": error}}


def handle_wait(execution, message: dict) -> dict:
    kind = message.get("kind")
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    key = message.get("key")
    if kind not in WAIT_KINDS or not isinstance(key, str):
        return {"limit": "unknown wait"}
    existing = execution.steps.get(key)
    if existing is not None and existing[1] == StepStatus.WAITING:
        return {"suspend": True}  # a repeated execution finds the same wait still open
    stop = execution.stop_reply()
    if stop is not None and (stop.get("cancelled") or existing is None):
        return stop
    try:
        return WAIT_HANDLERS[kind](execution, message, params)
    except ValueError as exc:
        error = {"message": str(exc), "type": "ValueError"}
        execution.open_step(message, kind=_step_kind(kind), status=StepStatus.FAILED, error=error)
        return _resolved(StepStatus.FAILED, error=error)


def _step_kind(kind: str) -> str:
    return kind


def _suspend(execution, message, *, kind: str, pending: dict, timeout=None, input=None,
             wake_at=None) -> tuple[str, dict]:  # fmt: skip
    step_id = execution.open_step(
        message, kind=kind, status=StepStatus.WAITING, input=input, wake_at=wake_at
    )
    pending = {"stepName": message.get("name"), **pending}
    Run.objects.filter(pk=execution.run.pk).update(pending=pending)
    deadline = wake_at
    if deadline is None and timeout is not None:
        deadline = timezone.now() + timedelta(seconds=_cap(timeout))
        Step.objects.filter(pk=step_id).update(wake_at=deadline)
    if deadline is not None:
        schedule_timer(step_id, deadline)
    return step_id, {"suspend": True}


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
    _, reply = _suspend(
        execution, message, kind="sleep", pending={"kind": "sleep", "until": until.isoformat()},
        input={"until": until.isoformat()}, wake_at=until,
    )  # fmt: skip
    return reply


def wait_event(execution, message, params):
    event_type = str(params.get("event_type") or "")[:200]
    if not event_type:
        raise ValueError("wait_for_event needs an event type")
    timeout = _seconds(params.get("timeout"))
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=execution.run.pk).first()
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
        _, reply = _suspend(
            execution, message, kind="event", pending={"kind": "event", "eventType": event_type},
            timeout=timeout, input={"eventType": event_type, "timeout": timeout},
        )  # fmt: skip
        return reply


def wait_input(execution, message, params):
    prompt = str(params.get("prompt") or "")[:5000]
    _, reply = _suspend(
        execution, message, kind="input", pending={"kind": "input", "prompt": prompt},
        timeout=_seconds(params.get("timeout")), input={"prompt": prompt},
    )  # fmt: skip
    return reply


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
    _, reply = _suspend(
        execution, message, kind="approval", pending=pending,
        timeout=_seconds(params.get("timeout")), input=step_input,
    )  # fmt: skip
    return reply


def wait_scan(execution, message, params):
    timeout = _seconds(params.get("timeout"))
    step_id = execution.open_step(
        message, kind="scan", status=StepStatus.WAITING, input={"subject": params.get("subject")}
    )
    scan = ScanRequest.objects.create(
        organization_id=execution.run.organization_id,
        run_id=execution.run.pk,
        step_id=step_id,
        subject=params.get("subject"),
    )
    Step.objects.filter(pk=step_id).update(
        input={"subject": params.get("subject"), "scanId": scan.pk, "link": scan.get_absolute_url()}
    )
    pending = {"stepName": message.get("name"), "kind": "scan", "scanId": scan.pk}
    Run.objects.filter(pk=execution.run.pk).update(pending=pending)
    if timeout is not None:
        deadline = timezone.now() + timedelta(seconds=_cap(timeout))
        Step.objects.filter(pk=step_id).update(wake_at=deadline)
        schedule_timer(step_id, deadline)
    return {"suspend": True}


def wait_child(execution, message, params):
    from loops.models import Loop
    from loops_project.errors import DomainError
    from runs.services import check_input, run_trigger

    ident = str(params.get("loop") or "")
    field = "pk" if ident.startswith("loop_") else "slug"
    loop = Loop.objects.filter(
        organization_id=execution.run.organization_id, **{field: ident}
    ).first()
    depth, limit = execution.run.depth + 1, settings.LOOPS_MAX_CHILD_DEPTH
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
            check_input(params.get("body"), field="body")
        except DomainError as exc:
            error = {"message": exc.message, "type": "ChildRunFailed"}
    if error is not None:
        execution.open_step(message, kind="child", status=StepStatus.FAILED, error=error)
        return _resolved(StepStatus.FAILED, error=error)
    step_id = execution.open_step(
        message,
        kind="child",
        status=StepStatus.WAITING,
        input={"loop": loop.slug, "body": params.get("body")},
    )
    try:
        child = run_trigger(
            loop=loop, input=params.get("body"), trigger_type="system", mode="live",
            parent_step_id=step_id, depth=depth,
        )  # fmt: skip
    except DomainError as exc:
        error = {"message": exc.message, "type": "ChildRunFailed"}
        Step.objects.filter(pk=step_id).update(
            status=StepStatus.FAILED, error=error, finished_at=timezone.now()
        )
        execution.steps[message["key"]][1] = StepStatus.FAILED
        return _resolved(StepStatus.FAILED, error=error)
    Step.objects.filter(pk=step_id).update(metadata={"childRunId": child.pk})
    pending = {"stepName": message.get("name"), "kind": "child", "childRunId": child.pk}
    Run.objects.filter(pk=execution.run.pk).update(pending=pending)
    return {"suspend": True}


WAIT_HANDLERS = {
    "sleep": wait_sleep,
    "event": wait_event,
    "input": wait_input,
    "approval": wait_approval,
    "scan": wait_scan,
    "child": wait_child,
}


# --- Suspending and waking ---------------------------------------------------------------------


@transaction.atomic
def suspend(execution) -> str | None:
    """End the execution in `waiting`, unless what it waits for already arrived, in which
    case the run goes straight back to the queue. Returns the new status, or None if the run
    is no longer this execution's."""
    run = Run.objects.select_for_update().filter(execution.owned()).first()
    if run is None:
        return None
    if Step.objects.filter(run_id=run.pk, status=StepStatus.WAITING).exists():
        Run.objects.filter(pk=run.pk).update(status=RunStatus.WAITING, lease_expires_at=None)
        return RunStatus.WAITING
    _requeue(run.pk)
    return RunStatus.PENDING


def _requeue(run_id: str) -> None:
    task_id = new_task_id()
    Run.objects.filter(pk=run_id).update(
        status=RunStatus.PENDING, pending=None, lease_expires_at=None, task_id=task_id
    )
    enqueue_execution(run_id, task_id)


def wake(run_id: str) -> bool:
    """Queue the next execution of a waiting run once nothing it waits for is open.
    Call inside a transaction that holds the run's lock."""
    run = Run.objects.filter(pk=run_id, status=RunStatus.WAITING).first()
    if run is None:
        return False
    if Step.objects.filter(run_id=run_id, status=StepStatus.WAITING).exists():
        return False
    _requeue(run_id)
    return True


def resolve_step(step: Step, *, status: str, output=None, error=None) -> bool:
    """Close a waiting step and wake its run. Call inside a transaction holding the run lock."""
    now = timezone.now()
    updated = Step.objects.filter(pk=step.pk, status=StepStatus.WAITING).update(
        status=status,
        output=output,
        error=error,
        finished_at=now,
        duration_ms=max(int((now - step.started_at).total_seconds() * 1000), 0),
        attempts=1,
    )
    if updated:
        wake(step.run_id)
    return bool(updated)


def lock_run(run_id: str) -> Run | None:
    return Run.objects.select_for_update().filter(pk=run_id).first()


@transaction.atomic
def fire_timer(step_id: str) -> str:
    """A sleep ended, or a wait timed out."""
    step = Step.objects.filter(pk=step_id).first()
    if step is None:
        return "gone"
    lock_run(step.run_id)
    step.refresh_from_db()
    if step.status != StepStatus.WAITING:
        return "already resolved"
    if step.wake_at and step.wake_at > timezone.now() + timedelta(seconds=1):
        schedule_timer(step.pk, step.wake_at)  # fired early (clock skew): try again
        return "rescheduled"
    if step.kind == "sleep":
        resolve_step(step, status=StepStatus.SUCCEEDED)
        return "slept"
    waited = int((timezone.now() - step.started_at).total_seconds())
    error = {"message": f"Step '{step.name}' timed out after {waited} s", "type": "StepTimeout"}
    if step.kind == "scan":
        ScanRequest.objects.filter(step=step, status=ScanStatus.PENDING).update(
            status=ScanStatus.EXPIRED
        )
    resolve_step(step, status=StepStatus.FAILED, error=error)
    return "timed out"
