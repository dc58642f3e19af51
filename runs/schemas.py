"""The API's run, step and log objects (API.md), built explicitly from the models."""

from datetime import datetime
from typing import Any

from ninja import Field, Schema

from runs.models import LogEntry, Run, Step
from runs.selectors import list_value


class PendingOut(Schema):
    kind: str
    prompt: str | None = None
    stepName: str | None = None
    tool: Any = None
    toolInput: Any = None
    eventType: str | None = None
    scanId: str | None = None
    until: str | None = None
    childRunId: str | None = None


class StepOut(Schema):
    id: str
    order: int
    name: str
    kind: str
    status: str
    input: Any = None
    output: Any = None
    error: Any = None
    attempts: int
    startedAt: datetime | None
    finishedAt: datetime | None
    durationMs: int | None
    metadata: Any = None
    iteration: int | None
    iterationItem: Any = None
    page: int | None = None
    parentId: str | None
    line: int | None


class RunOut(Schema):
    id: str
    loopId: str
    loopSlug: str
    version: int | None
    status: str
    triggerType: str
    mode: str
    input: Any = None
    output: Any = None
    inputTruncated: bool = Field(
        False, description="In lists: the input's JSON is longer than the preview; `input` "
        "is null and `inputPreview` holds its start (GET /api/v1/runs/{id} has it whole)",
    )  # fmt: skip
    inputPreview: str | None = None
    outputTruncated: bool = Field(
        False, description="In lists: as inputTruncated, for the output (`outputPreview`)"
    )
    outputPreview: str | None = None
    error: str | None
    errorDetail: dict | None = None
    createdAt: datetime
    startedAt: datetime | None
    completedAt: datetime | None
    durationMs: int | None
    cpuTimeMs: int
    attempt: int
    restartedFrom: str | None
    batchId: str | None
    parentRunId: str | None = None
    totalSteps: int
    pending: PendingOut | None
    steps: list[StepOut] | None = None


class LogOut(Schema):
    time: datetime
    level: str
    message: str
    stepId: str | None


def step_payload(step: Step) -> dict:
    return {
        "id": step.pk,
        "order": step.order,
        "name": step.name,
        "kind": step.kind,
        "status": step.status,
        "input": step.input,
        "output": step.output,
        "error": step.error,
        "attempts": step.attempts,
        "startedAt": step.started_at,
        "finishedAt": step.finished_at,
        "durationMs": step.duration_ms,
        "metadata": step.metadata,
        "iteration": step.iteration,
        "iterationItem": step.iteration_item,
        "page": step.page,
        "parentId": step.parent_id,
        "line": step.line,
    }


def run_payload(run: Run, *, steps: list[Step] | None = None) -> dict:
    """A run as API.md describes it. Needs run.loop and run.version (select_related). A run
    from runs.selectors.without_values (a list) carries a large input or output as a preview
    and a flag instead of whole."""
    failed = run.status == "failed"
    input, input_preview, input_truncated = list_value(run, "input")
    output, output_preview, output_truncated = list_value(run, "output")
    data = {
        "id": run.pk,
        "loopId": run.loop_id,
        "loopSlug": run.loop.slug,
        "version": run.version.number if run.version_id else None,
        "status": run.status,
        "triggerType": run.trigger_type,
        "mode": run.mode,
        "input": input,
        "output": output,
        "inputTruncated": input_truncated,
        "inputPreview": input_preview,
        "outputTruncated": output_truncated,
        "outputPreview": output_preview,
        "error": (run.error_message or "The run failed") if failed else None,
        "errorDetail": {
            "message": run.error_message,
            "type": run.error_type or None,
            "stepName": run.error_step or None,
            "traceback": run.error_traceback or None,
        }
        if failed
        else None,
        "createdAt": run.created_at,
        "startedAt": run.started_at,
        "completedAt": run.completed_at,
        "durationMs": run.duration_ms,
        "cpuTimeMs": run.cpu_time_ms,
        "attempt": run.attempt,
        "restartedFrom": run.restarted_from_id,
        "batchId": run.batch_id,
        "parentRunId": None,
        "totalSteps": run.total_steps,
        "pending": run.pending if run.status == "waiting" else None,
    }
    if run.parent_step_id:
        data["parentRunId"] = (
            Step.objects.filter(pk=run.parent_step_id).values_list("run_id", flat=True).first()
        )
    if steps is not None:
        data["steps"] = [step_payload(s) for s in steps]
        data["totalSteps"] = max(len(steps), run.total_steps)
    return data


def log_payload(entry: LogEntry) -> dict:
    return {
        "time": entry.time,
        "level": entry.level,
        "message": entry.message,
        "stepId": entry.step_id,
    }
