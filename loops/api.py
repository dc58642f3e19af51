"""Loops, versions and schedules API: every call needs a `full` token (the router's auth)."""

from ninja import Path, Router, Schema, Status

from accounts.audit import Actor
from loops import schedules, services
from loops.access import get_loop_for, get_schedule_for, get_version_for
from loops.models import Loop
from loops.schemas import (
    LoopIn,
    LoopOut,
    LoopPatch,
    RollbackIn,
    ScheduleIn,
    ScheduleOut,
    SchedulePatch,
    VersionIn,
    VersionOut,
    loop_payload,
    schedule_payload,
    version_payload,
)
from loops_project.api_base import ERRORS_FULL, ErrorOut, FullScopeAuth

router = Router(tags=["loops"], auth=FullScopeAuth())


class LoopEnvelope(Schema):
    data: LoopOut


class LoopList(Schema):
    data: list[LoopOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


class VersionEnvelope(Schema):
    data: VersionOut


class VersionList(Schema):
    data: list[VersionOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


class ScheduleEnvelope(Schema):
    data: ScheduleOut


class ScheduleList(Schema):
    data: list[ScheduleOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


def _list(items: list) -> dict:
    return {"data": items, "limit": len(items), "offset": 0, "hasMore": False, "nextCursor": None}


def _author(request) -> str:
    return f"token:{request.auth.name}"


@router.get("/loops", response={200: LoopList, **ERRORS_FULL})
def list_loops(request):
    loops = Loop.objects.for_org(request.auth.organization).select_related(
        "active_version", "organization"
    )
    return _list([loop_payload(loop, request) for loop in loops])


@router.post("/loops", response={201: LoopEnvelope, 409: ErrorOut, **ERRORS_FULL})
def create_loop(request, payload: LoopIn):
    """Create a loop; with `code`, version 1 is deployed at once."""
    loop = services.loop_create(
        organization=request.auth.organization, slug=payload.slug, name=payload.name,
        description=payload.description, code=payload.code, author_name=_author(request),
        concurrency_limit=payload.concurrencyLimit, actor=Actor.from_request(request),
    )  # fmt: skip
    loop = get_loop_for(request.auth.organization, loop.pk)
    return Status(201, {"data": loop_payload(loop, request)})


@router.get("/loops/{loop}", response={200: LoopEnvelope, **ERRORS_FULL})
def get_loop(request, loop: str):
    return {"data": loop_payload(get_loop_for(request.auth.organization, loop), request)}


@router.patch("/loops/{loop}", response={200: LoopEnvelope, **ERRORS_FULL})
def patch_loop(request, loop: str, payload: LoopPatch):
    """Change name, description, paused (a paused loop answers triggers with 409) or
    concurrencyLimit (null clears it)."""
    target = get_loop_for(request.auth.organization, loop)
    limit_given = "concurrencyLimit" in payload.model_fields_set
    services.loop_update(
        loop=target, name=payload.name, description=payload.description, paused=payload.paused,
        concurrency_limit=payload.concurrencyLimit if limit_given else services.UNCHANGED,
        actor=Actor.from_request(request),
    )  # fmt: skip
    return {"data": loop_payload(target, request)}


@router.post("/loops/{loop}/versions", response={201: VersionEnvelope, **ERRORS_FULL})
def deploy_version(request, loop: str, payload: VersionIn):
    """Validate and deploy the next version; invalid code is 422 with the line, nothing saved."""
    target = get_loop_for(request.auth.organization, loop)
    version = services.loop_deploy(
        loop=target, code=payload.code, note=payload.note, author_name=_author(request),
        actor=Actor.from_request(request),
    )  # fmt: skip
    return Status(201, {"data": version_payload(version, active_id=version.pk, code=True)})


@router.get("/loops/{loop}/versions", response={200: VersionList, **ERRORS_FULL})
def list_versions(request, loop: str):
    target = get_loop_for(request.auth.organization, loop)
    versions = target.versions.order_by("-number").defer("code")
    return _list([version_payload(v, active_id=target.active_version_id) for v in versions])


@router.get("/loops/{loop}/versions/{number}", response={200: VersionEnvelope, **ERRORS_FULL})
def get_version(request, loop: str, number: int = Path(..., ge=1, le=2**31 - 1)):
    target = get_loop_for(request.auth.organization, loop)
    version = get_version_for(target, number)
    return {"data": version_payload(version, active_id=target.active_version_id, code=True)}


@router.post("/loops/{loop}/rollback", response={200: LoopEnvelope, **ERRORS_FULL})
def rollback(request, loop: str, payload: RollbackIn):
    target = get_loop_for(request.auth.organization, loop)
    services.loop_rollback(loop=target, number=payload.version, actor=Actor.from_request(request))
    return {"data": loop_payload(get_loop_for(request.auth.organization, target.pk), request)}


@router.get(
    "/loops/{loop}/schedules", response={200: ScheduleList, **ERRORS_FULL}, tags=["schedules"]
)
def list_schedules(request, loop: str):
    target = get_loop_for(request.auth.organization, loop)
    return _list([schedule_payload(s) for s in target.schedules.all()])


@router.post(
    "/loops/{loop}/schedules", response={201: ScheduleEnvelope, **ERRORS_FULL}, tags=["schedules"]
)
def create_schedule(request, loop: str, payload: ScheduleIn):
    """Add a cron schedule (five fields, in `timezone`); a bad expression is 422."""
    target = get_loop_for(request.auth.organization, loop)
    schedule = schedules.schedule_create(
        loop=target, cron=payload.cron, timezone_name=payload.timezone, input=payload.input,
        enabled=payload.enabled, actor=Actor.from_request(request),
    )  # fmt: skip
    return Status(201, {"data": schedule_payload(schedule)})


@router.patch(
    "/schedules/{schedule_id}", response={200: ScheduleEnvelope, **ERRORS_FULL}, tags=["schedules"]
)
def patch_schedule(request, schedule_id: str, payload: SchedulePatch):
    schedule = get_schedule_for(request.auth.organization, schedule_id)
    schedule = schedules.schedule_update(
        schedule=schedule, cron=payload.cron, timezone_name=payload.timezone,
        input=payload.input, input_given="input" in payload.model_fields_set,
        enabled=payload.enabled, actor=Actor.from_request(request),
    )  # fmt: skip
    return {"data": schedule_payload(schedule)}


@router.delete("/schedules/{schedule_id}", response={204: None, **ERRORS_FULL}, tags=["schedules"])
def delete_schedule(request, schedule_id: str):
    schedules.schedule_delete(
        schedule=get_schedule_for(request.auth.organization, schedule_id),
        actor=Actor.from_request(request),
    )
    return Status(204, None)
