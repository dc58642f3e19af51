"""Bulk actions API (API.md "Operator control"): `POST /api/v1/runs/bulk`, `GET
/api/v1/bulk/{id}`, `POST /api/v1/bulk/{id}/abort`. Full-scope tokens only."""

from datetime import datetime
from typing import Literal

from ninja import Field, Router, Schema, Status
from pydantic import ConfigDict

from accounts.audit import Actor
from loops_project.api_base import ERRORS_FULL, ErrorOut, FullScopeAuth
from runs import bulk
from runs.models import BulkJob

router = Router(tags=["bulk"], auth=FullScopeAuth())


class BulkFilterIn(Schema):
    """The filters of GET /api/v1/runs, with the same values and the same errors."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(
        None, description="Comma list of pending, running, waiting, succeeded, failed, cancelled"
    )
    loop: str | None = Field(None, description="Loop id or slug")
    triggerType: str | None = Field(None, description="user, api_token or system")
    mode: str | None = Field(None, description="live or test")
    batch: str | None = Field(None, description="Batch id")
    createdAfter: str | None = Field(None, description="ISO 8601 with time zone (inclusive)")
    createdBefore: str | None = Field(None, description="ISO 8601 with time zone (exclusive)")
    stepStatus: str | None = Field(None, description="failed or rejected: runs with such a step")
    triggeredBy: str | None = Field(None, description="Token id, or a member's id or username")
    hasErrors: bool = Field(
        False, description="Runs that failed or have a step that failed (the runs page's filter)"
    )


class BulkIn(Schema):
    action: Literal["cancel", "resume", "restart"]
    filter: BulkFilterIn = Field(
        ..., description="The runs to act on: `{}` for every run of the organization"
    )
    dryRun: bool = Field(False, description="Only count the runs the action would go through")


class CountOut(Schema):
    count: int


class CountEnvelope(Schema):
    data: CountOut


class BulkJobOut(Schema):
    id: str
    action: str
    status: str = Field(description="running, done or aborted")
    total: int = Field(description="The runs the filter matched when the job was created")
    done: int = Field(description="Runs the action was applied to")
    failed: int = Field(description="Runs it could not be applied to (see `failures`)")
    failures: dict[str, int] = Field(
        description="Why runs were not acted on, by error code: run_ended, not_resumable, "
        "run_not_ended, run_gone, loop_paused …"
    )
    filter: dict
    createdAt: datetime
    completedAt: datetime | None


class BulkJobEnvelope(Schema):
    data: BulkJobOut


def bulk_payload(job: BulkJob) -> dict:
    return {
        "id": job.pk, "action": job.action, "status": job.status, "total": job.total,
        "done": job.done, "failed": job.failed, "failures": job.failures, "filter": job.filter,
        "createdAt": job.created_at, "completedAt": job.completed_at,
    }  # fmt: skip


@router.post(
    "/runs/bulk",
    response={200: CountEnvelope, 202: BulkJobEnvelope, **ERRORS_FULL},
    summary="Cancel, resume or restart every run a filter matches",
)
def bulk_start(request, payload: BulkIn):
    """With `dryRun`, answers how many runs the filter matches now (exactly what GET
    /api/v1/runs would list). Otherwise starts a bulk job on those runs and answers 202 at
    once; the job works in the background, in chunks (`GET /api/v1/bulk/{id}` for its
    progress). Runs created later are not included. A run the action does not apply to (cancel
    of an ended run, resume of a run that is not failed or cancelled, restart of a run that
    has not ended) is counted in `failed`. A bad filter answers 422 naming the field, as the
    runs list does."""
    org = request.auth.organization
    filter = payload.filter.model_dump(exclude_defaults=True)
    if payload.dryRun:
        return Status(200, {"data": {"count": bulk.bulk_count(organization=org, filter=filter)}})
    job = bulk.bulk_job_create(
        organization=org, action=payload.action, filter=filter, actor=Actor.from_request(request)
    )
    return Status(202, {"data": bulk_payload(job)})


@router.get("/bulk/{job_id}", response={200: BulkJobEnvelope, **ERRORS_FULL}, summary="A bulk job")
def bulk_get(request, job_id: str):
    """Its progress: `done` and `failed` grow until their sum is `total`, then `status` is
    `done`."""
    job = bulk.get_bulk_job_for(request.auth.organization, job_id)
    if bulk.bulk_job_revive(job):
        job.refresh_from_db()
    return {"data": bulk_payload(job)}


@router.post(
    "/bulk/{job_id}/abort",
    response={200: BulkJobEnvelope, 409: ErrorOut, **ERRORS_FULL},
    summary="Abort a bulk job",
)
def bulk_abort(request, job_id: str):
    """The job stops at its next chunk; runs it already acted on stay so. 409 once the job
    has ended."""
    job = bulk.get_bulk_job_for(request.auth.organization, job_id)
    job = bulk.bulk_job_abort(job=job, actor=Actor.from_request(request))
    return {"data": bulk_payload(job)}
