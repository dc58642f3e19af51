"""Status transitions that end an execution. Each is conditional on the execution still
owning the run (status running, same execution id), so a cancelled or taken-over run is
never overwritten."""

from django.utils import timezone

from runs.models import Run, RunStatus, Step, StepStatus
from runs.notify import run_status_changed


def _duration_ms(run: Run, now) -> int | None:
    started = run.started_at or now
    return max(int((now - started).total_seconds() * 1000), 0)


def _end(execution, status: str, **fields) -> bool:
    now = timezone.now()
    run = Run.objects.filter(pk=execution.run.pk).only("started_at").first()
    updated = Run.objects.filter(execution.owned()).update(
        status=status,
        completed_at=now,
        duration_ms=_duration_ms(run, now),
        lease_expires_at=None,
        pending=None,
        **fields,
    )
    if updated:
        run_status_changed(execution.run.pk, status)
    return bool(updated)


def run_succeed(execution, *, output) -> str:
    if _end(execution, RunStatus.SUCCEEDED, output=output):
        return "succeeded"
    return "abandoned"


def run_fail(execution, *, error: dict) -> str:
    step_name = error.get("step") or ""
    step_key = step_name
    if step_key in execution.steps:
        step_name = (
            Step.objects.filter(pk=execution.steps[step_key][0])
            .values_list("name", flat=True)
            .first()
            or step_name
        )
    # The step in progress when the execution died is failed with the same error.
    Step.objects.filter(run_id=execution.run.pk, status=StepStatus.RUNNING).update(
        status=StepStatus.FAILED, error=error, finished_at=timezone.now()
    )
    detail = (
        f"{error.get('type')}: {error['message']}"
        if error.get("type") not in (None, "", "RuntimeError", "Exception")
        and not error["message"].startswith(error.get("type", ""))
        else error["message"]
    )
    message = f"Step '{step_name}' failed: {detail}" if step_name else detail
    if _end(
        execution,
        RunStatus.FAILED,
        error_message=message[:10000],
        error_type=str(error.get("type") or "")[:200],
        error_step=step_name[:200],
        error_traceback=str(error.get("traceback") or ""),
    ):
        return "failed"
    return "abandoned"


def run_suspend(execution) -> str:
    """The program waits: no worker is held until something wakes the run."""
    from runs.engine.waits import suspend

    status = suspend(execution)
    if status is None:
        return "abandoned"
    if status == RunStatus.WAITING:
        run_status_changed(execution.run.pk, status)
    return status


def run_abandon(execution) -> str:
    """The run was cancelled (or taken over) while this execution ran: write nothing."""
    return "abandoned"
