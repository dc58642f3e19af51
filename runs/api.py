"""Runs API (API.md "Trigger" and "Runs").

A token's scope is its router's: `trigger_router` and `router` serve every token (trigger runs,
read runs), `full_router` only `full` ones (act on runs, post scan results, webhooks)."""

import json
import math
from typing import Any, Literal

from django.conf import settings
from django.db.models import Count
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from accounts.access import org_is_named
from accounts.audit import Actor
from loops.access import get_loop_for
from loops_project.api_base import (
    ERRORS,
    ERRORS_FULL,
    ErrorOut,
    FullScopeAuth,
    json_body,
    trigger_body,
)
from loops_project.errors import Invalid
from runs import live, patches, services
from runs.access import get_batch_for, get_run_for, get_scan_for, get_step_for, get_webhook_for
from runs.models import LogEntry, Run, RunStatus, Step, TriggerType, Webhook
from runs.schemas import LogOut, RunOut, log_payload, run_payload
from runs.selectors import filter_runs, page_runs, without_values
from runs.webhooks import webhook_create, webhook_delete

trigger_router = Router(tags=["trigger"])
router = Router(tags=["runs"])
full_router = Router(tags=["runs"], auth=FullScopeAuth())


class TriggerOut(Schema):
    runId: str
    workflowInstanceId: str


class RunEnvelope(Schema):
    data: RunOut


class RunList(Schema):
    data: list[RunOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


class LogList(Schema):
    data: list[LogOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


def _runs_with_relations():
    return Run.objects.select_related("loop", "version")


def _live_timeout(raw) -> float:
    if raw is None:
        return float(settings.LOOPS_LIVE_TIMEOUT_DEFAULT)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise Invalid("timeout must be a number of seconds", details={"field": "timeout"}) from None
    if not math.isfinite(value) or value < 0 or value > settings.LOOPS_LIVE_TIMEOUT_MAX:
        raise Invalid(
            f"timeout must be between 0 and {settings.LOOPS_LIVE_TIMEOUT_MAX} seconds",
            details={"field": "timeout"},
        )
    return value


def _trigger_one(request, loop, value, idempotency_key) -> tuple[Run, bool]:
    """Trigger a run, or answer the run that the same Idempotency-Key already made."""
    run = services.run_trigger(
        loop=loop, input=value, trigger_type=TriggerType.API_TOKEN, token=request.auth,
        idempotency_key=idempotency_key or None,
    )  # fmt: skip
    return run, True


@trigger_router.post(
    "/{org}/{loop}",
    response={200: RunEnvelope, 202: TriggerOut, 409: ErrorOut, **ERRORS},
    summary="Trigger a run (the loop's trigger URL)",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {}}},
            "description": "Any JSON value; it becomes event.body.",
        }
    },
)
def trigger(
    request,
    org: str,
    loop: str,
    mode: Literal["async", "live"] = "async",
    timeout: float | None = Query(None, description="Live mode: seconds to wait (max 120)"),
):
    """Queue a run with the posted JSON as input. `?mode=live&timeout=S` waits for the end."""
    organization = request.auth.organization
    if not org_is_named(organization, org):
        raise HttpError(404, "No such loop.")  # another organization's, or none: the same 404
    target = get_loop_for(organization, loop)
    body = trigger_body(request)
    wait = _live_timeout(timeout) if mode == "live" else None
    run, _ = _trigger_one(request, target, body, request.headers.get("Idempotency-Key"))
    if wait is not None:
        ended = live.wait_for_end(run, wait, _runs_with_relations())
        if ended is not None:
            return Status(200, {"data": run_payload(ended)})
    return Status(202, {"runId": run.pk, "workflowInstanceId": run.task_id})


class LoopTriggerIn(Schema):
    input: Any = None
    inputs: list[Any] | None = Field(None, min_length=1, max_length=100_000)
    mode: Literal["async", "live"] = "async"
    timeout: float | None = None
    idempotencyKey: str | None = Field(None, max_length=200)


class BatchCreated(Schema):
    batchId: str
    count: int


class BatchCreatedEnvelope(Schema):
    data: BatchCreated


@router.post(
    "/loops/{loop}/runs",
    response={200: RunEnvelope, 202: RunEnvelope | BatchCreatedEnvelope, 409: ErrorOut, **ERRORS},
    summary="Trigger one run or a batch",
)
def trigger_runs(request, loop: str, payload: LoopTriggerIn):
    target = get_loop_for(request.auth.organization, loop)
    given = payload.model_fields_set
    if "inputs" in given and "input" in given:
        raise Invalid("Give either input or inputs, not both.", details={"field": "inputs"})
    if "inputs" in given:
        if payload.inputs is None:
            raise Invalid("inputs must be a list of 1 to 100000 items", details={"field": "inputs"})
        batch = services.run_trigger_batch(
            loop=target, inputs=payload.inputs, trigger_type=TriggerType.API_TOKEN,
            token=request.auth,
        )  # fmt: skip
        return Status(202, {"data": {"batchId": batch.pk, "count": batch.count}})
    wait = _live_timeout(payload.timeout) if payload.mode == "live" else None
    key = request.headers.get("Idempotency-Key") or payload.idempotencyKey
    # No input at all is an empty object, as a trigger without a body (an explicit null stays).
    run, _ = _trigger_one(request, target, payload.input if "input" in given else {}, key)
    if wait is not None:
        ended = live.wait_for_end(run, wait, _runs_with_relations())
        if ended is not None:
            return Status(200, {"data": run_payload(ended)})
    run = _runs_with_relations().get(pk=run.pk)
    return Status(202, {"data": run_payload(run)})


@router.get("/runs", response={200: RunList, **ERRORS}, summary="List runs")
def list_runs(
    request,
    status: str | None = Query(
        None, description="Comma list of pending, running, waiting, succeeded, failed, cancelled"
    ),
    loop: str | None = Query(None, description="Loop id or slug"),
    triggerType: str | None = Query(None, description="user, api_token or system"),
    mode: str | None = Query(None, description="live or test"),
    batch: str | None = Query(None, description="Batch id"),
    createdAfter: str | None = Query(None, description="ISO 8601 with time zone (inclusive)"),
    createdBefore: str | None = Query(None, description="ISO 8601 with time zone (exclusive)"),
    stepStatus: str | None = Query(None, description="failed or rejected: runs with such a step"),
    triggeredBy: str | None = Query(None, description="Token id, or a member's id or username"),
    limit: int = Query(10, description="1 to 100"),
    offset: int = Query(0, description="Rows to skip (0 to 1000000)"),
    cursor: str | None = Query(None, description="nextCursor of the previous page"),
    sort: str = Query(
        "-createdAt",
        description="createdAt, startedAt, completedAt, status or durationMs; - for descending",
    ),
):
    """Newest first by default. Unknown filter values answer 422 naming the field. An input
    or output whose JSON is longer than LOOPS_LIST_PREVIEW_CHARS (4096) comes as null, with
    inputTruncated/outputTruncated true and its start in inputPreview/outputPreview; the run
    itself (GET /api/v1/runs/{id}) has it whole."""
    org = request.auth.organization
    qs = filter_runs(
        without_values(_runs_with_relations().for_org(org)), org, status=status, loop=loop,
        trigger_type=triggerType, mode=mode, batch=batch, created_after=createdAfter,
        created_before=createdBefore, step_status=stepStatus, triggered_by=triggeredBy,
    )  # fmt: skip
    rows, has_more, next_cursor = page_runs(
        qs, sort=sort, limit=limit, offset=offset, cursor=cursor
    )
    return {
        "data": [run_payload(r) for r in rows],
        "limit": limit,
        "offset": offset,
        "hasMore": has_more,
        "nextCursor": next_cursor,
    }


@router.get(
    "/loops/{loop}/runs", response={200: RunList, **ERRORS}, summary="A loop's 50 newest runs"
)
def loop_runs(request, loop: str):
    """Large inputs and outputs as in GET /api/v1/runs: a preview and a flag."""
    target = get_loop_for(request.auth.organization, loop)
    runs = without_values(_runs_with_relations().filter(loop=target))
    rows = list(runs.order_by("-created_at", "-pk")[:50])
    return {"data": [run_payload(r) for r in rows], "limit": 50, "offset": 0,
            "hasMore": False, "nextCursor": None}  # fmt: skip


@router.get("/runs/{run_id}", response={200: RunEnvelope, **ERRORS}, summary="A run with its steps")
def get_run(request, run_id: str):
    run = get_run_for(request.auth.organization, run_id)
    steps = list(Step.objects.filter(run=run).order_by("order"))
    return {"data": run_payload(run, steps=steps)}


@router.get("/runs/{run_id}/logs", response={200: LogList, **ERRORS}, summary="A run's log lines")
def get_logs(
    request,
    run_id: str,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
):
    run = get_run_for(request.auth.organization, run_id)
    rows = list(
        LogEntry.objects.filter(run=run).order_by("time", "id")[offset : offset + limit + 1]
    )
    return {
        "data": [log_payload(e) for e in rows[:limit]],
        "limit": limit,
        "offset": offset,
        "hasMore": len(rows) > limit,
        "nextCursor": None,
    }


class OutputChunk(Schema):
    data: str
    offset: int
    length: int
    total: int
    hasMore: bool


@router.get(
    "/runs/{run_id}/steps/{step_id}/output",
    response={200: OutputChunk, **ERRORS},
    summary="A chunk of a step's output (its JSON text)",
)
def step_output(request, run_id: str, step_id: str, offset: int = Query(0, ge=0, le=2**40),
                length: int = Query(65536, ge=1, le=1048576)):  # fmt: skip
    run = get_run_for(request.auth.organization, run_id)
    step = get_step_for(run, step_id)
    text = json.dumps(step.output, ensure_ascii=False)
    chunk = text[offset : offset + length]
    return {"data": chunk, "offset": offset, "length": len(chunk), "total": len(text),
            "hasMore": offset + len(chunk) < len(text)}  # fmt: skip


class RespondIn(Schema):
    action: str
    input: Any = None
    reason: str | None = Field(None, max_length=2000)


class RunStatusOut(Schema):
    id: str
    status: str


class RunStatusEnvelope(Schema):
    data: RunStatusOut


@full_router.post(
    "/runs/{run_id}/respond",
    response={202: RunStatusEnvelope, 409: ErrorOut, **ERRORS_FULL},
    summary="Answer a question or decide an approval",
)
def respond(request, run_id: str, payload: RespondIn):
    run = get_run_for(request.auth.organization, run_id)
    run = services.run_respond(
        run=run, action=payload.action, value=payload.input,
        has_value="input" in payload.model_fields_set and payload.input is not None,
        reason=payload.reason, actor=Actor.from_request(request),
    )  # fmt: skip
    return Status(202, {"data": {"id": run.pk, "status": run.status}})


class EventIn(Schema):
    type: str = Field(..., min_length=1, max_length=200)
    payload: Any = None


class EventOut(Schema):
    id: str
    type: str
    consumed: bool


class EventEnvelope(Schema):
    data: EventOut


@full_router.post(
    "/runs/{run_id}/events",
    response={202: EventEnvelope, 409: ErrorOut, **ERRORS_FULL},
    summary="Send an event to a run",
)
def send_event(request, run_id: str, payload: EventIn):
    run = get_run_for(request.auth.organization, run_id)
    actor = Actor.from_request(request)
    event = patches.run_event_send(run=run, type=payload.type, payload=payload.payload, actor=actor)
    return Status(
        202,
        {
            "data": {
                "id": event.pk,
                "type": event.type,
                "consumed": event.consumed_by_id is not None,
            }
        },
    )


@full_router.post(
    "/runs/{run_id}/resume", response={202: RunEnvelope, 409: ErrorOut, **ERRORS_FULL}
)
def resume(request, run_id: str):
    """Continue a failed or cancelled run from its last checkpoint (pinned version)."""
    run = services.run_resume(
        run=get_run_for(request.auth.organization, run_id), actor=Actor.from_request(request)
    )
    return Status(202, {"data": run_payload(_runs_with_relations().get(pk=run.pk))})


@full_router.post(
    "/runs/{run_id}/restart", response={201: RunEnvelope, 409: ErrorOut, **ERRORS_FULL}
)
def restart(request, run_id: str):
    """A new run with the same input on the active version; the original is unchanged."""
    original = get_run_for(request.auth.organization, run_id)
    run = services.run_restart(run=original, token=request.auth,
                               trigger_type=TriggerType.API_TOKEN,
                               actor=Actor.from_request(request))  # fmt: skip
    return Status(201, {"data": run_payload(_runs_with_relations().get(pk=run.pk))})


@full_router.post(
    "/runs/{run_id}/cancel", response={202: RunEnvelope, 409: ErrorOut, **ERRORS_FULL}
)
def cancel(request, run_id: str):
    """Cancel a pending, running or waiting run."""
    run = services.run_cancel(
        run=get_run_for(request.auth.organization, run_id), actor=Actor.from_request(request)
    )
    return Status(202, {"data": run_payload(_runs_with_relations().get(pk=run.pk))})


class BatchOut(Schema):
    id: str
    loopId: str
    count: int
    counts: dict[str, int]
    createdAt: Any


class BatchEnvelope(Schema):
    data: BatchOut


@router.get(
    "/batches/{batch_id}", response={200: BatchEnvelope, **ERRORS}, summary="A batch's counts"
)
def get_batch(request, batch_id: str):
    batch = get_batch_for(request.auth.organization, batch_id)
    counts = dict.fromkeys(RunStatus.values, 0)
    for row in Run.objects.filter(batch=batch).values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    return {"data": {"id": batch.pk, "loopId": batch.loop_id, "count": batch.count,
                     "counts": counts, "createdAt": batch.created_at}}  # fmt: skip


class ScanOut(Schema):
    id: str
    runId: str
    status: str
    subject: Any = None
    result: Any = None
    link: str
    createdAt: Any
    completedAt: Any = None


class ScanEnvelope(Schema):
    data: ScanOut


def scan_payload(request, scan) -> dict:
    return {
        "id": scan.pk, "runId": scan.run_id, "status": scan.status, "subject": scan.subject,
        "result": scan.result, "link": request.build_absolute_uri(scan.get_absolute_url()),
        "createdAt": scan.created_at, "completedAt": scan.completed_at,
    }  # fmt: skip


@router.get(
    "/scans/{scan_id}", response={200: ScanEnvelope, **ERRORS}, summary="A facial-scan request"
)
def get_scan(request, scan_id: str):
    return {"data": scan_payload(request, get_scan_for(request.auth.organization, scan_id))}


@full_router.post(
    "/scans/{scan_id}/result",
    response={202: ScanEnvelope, 409: ErrorOut, **ERRORS_FULL},
    summary="Post a scan's measures (resumes the waiting run)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
def post_scan_result(request, scan_id: str):
    scan = get_scan_for(request.auth.organization, scan_id)
    scan = services.scan_submit_result(scan=scan, result=json_body(request))
    return Status(202, {"data": scan_payload(request, scan)})


# --- Webhooks -----------------------------------------------------------------------------------


class WebhookIn(Schema):
    url: str = Field(..., max_length=500)
    events: list[str] | None = None
    loop: str | None = None


class WebhookOut(Schema):
    id: str
    url: str
    events: list[str]
    loopId: str | None
    createdAt: Any
    secret: str | None = None


class WebhookEnvelope(Schema):
    data: WebhookOut


class WebhookList(Schema):
    data: list[WebhookOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


def webhook_payload(hook: Webhook, *, secret: bool = False) -> dict:
    data = {"id": hook.pk, "url": hook.url, "events": hook.events, "loopId": hook.loop_id,
            "createdAt": hook.created_at}  # fmt: skip
    if secret:
        data["secret"] = hook.secret
    return data


@full_router.get("/webhooks", response={200: WebhookList, **ERRORS_FULL}, tags=["webhooks"])
def list_webhooks(request):
    hooks = list(Webhook.objects.filter(organization=request.auth.organization))
    return {"data": [webhook_payload(h) for h in hooks], "limit": len(hooks), "offset": 0,
            "hasMore": False, "nextCursor": None}  # fmt: skip


@full_router.post("/webhooks", response={201: WebhookEnvelope, **ERRORS_FULL}, tags=["webhooks"])
def create_webhook(request, payload: WebhookIn):
    """Create a webhook; the answer carries its signing secret, shown only this once."""
    org = request.auth.organization
    loop = get_loop_for(org, payload.loop) if payload.loop else None
    hook = webhook_create(organization=org, url=payload.url, events=payload.events, loop=loop,
                          actor=Actor.from_request(request))  # fmt: skip
    return Status(201, {"data": webhook_payload(hook, secret=True)})


@full_router.delete("/webhooks/{hook_id}", response={204: None, **ERRORS_FULL}, tags=["webhooks"])
def delete_webhook(request, hook_id: str):
    webhook_delete(
        webhook=get_webhook_for(request.auth.organization, hook_id),
        actor=Actor.from_request(request),
    )
    return Status(204, None)
