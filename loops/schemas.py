from datetime import datetime
from typing import Annotated, Any

from ninja import Field, Schema

from accounts.models import CONCURRENCY_LIMIT_MAX
from loops.models import Loop, LoopVersion, Schedule


class LoopOut(Schema):
    id: str
    slug: str
    name: str
    description: str
    paused: bool
    concurrencyLimit: int | None = Field(
        ..., description="At most this many runs of the loop at once (null: no limit of its own)."
    )
    activeVersion: int | None
    triggerUrl: str
    createdAt: datetime
    updatedAt: datetime


NAME_MAX = Loop._meta.get_field("name").max_length
DESCRIPTION_MAX = Loop._meta.get_field("description").max_length
# Strict: "5", 5.0 and true are not limits (422), as a lax int would take them.
ConcurrencyLimit = Annotated[
    int,
    Field(
        strict=True, ge=1, le=CONCURRENCY_LIMIT_MAX,
        description="At most this many runs of the loop at once; runs over it stay pending and "
        "start as others end; waiting runs hold no slot. null: no limit of the loop's own.",
    ),
]  # fmt: skip


class LoopIn(Schema):
    slug: str = Field(..., min_length=1, max_length=64)
    name: str = Field("", max_length=NAME_MAX)
    description: str = Field("", max_length=DESCRIPTION_MAX)
    code: str | None = None
    concurrencyLimit: ConcurrencyLimit | None = None


class LoopPatch(Schema):
    name: str | None = Field(None, max_length=NAME_MAX)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX)
    paused: bool | None = None
    concurrencyLimit: ConcurrencyLimit | None = None  # null clears it; absent keeps it


class VersionOut(Schema):
    id: str
    number: int
    active: bool
    createdAt: datetime
    author: str | None
    note: str
    code: str | None = None


class VersionIn(Schema):
    code: str
    note: str = Field("", max_length=500)


class RollbackIn(Schema):
    version: int = Field(..., ge=1, le=2**31 - 1)


class ScheduleOut(Schema):
    id: str
    loopId: str
    cron: str
    timezone: str
    input: Any = None
    enabled: bool
    nextRunAt: datetime | None
    lastRunAt: datetime | None


class ScheduleIn(Schema):
    cron: str = Field(..., min_length=1, max_length=100)
    timezone: str = Field("UTC", max_length=64)
    input: Any = None
    enabled: bool = True


class SchedulePatch(Schema):
    cron: str | None = Field(None, min_length=1, max_length=100)
    timezone: str | None = Field(None, max_length=64)
    input: Any = None
    enabled: bool | None = None


def loop_payload(loop: Loop, request=None) -> dict:
    path = f"/api/loop/{loop.organization.slug}/{loop.slug}"
    return {
        "id": loop.pk,
        "slug": loop.slug,
        "name": loop.name,
        "description": loop.description,
        "paused": loop.paused,
        "concurrencyLimit": loop.concurrency_limit,
        "activeVersion": loop.active_version.number if loop.active_version_id else None,
        "triggerUrl": request.build_absolute_uri(path) if request is not None else path,
        "createdAt": loop.created_at,
        "updatedAt": loop.updated_at,
    }


def version_payload(version: LoopVersion, *, active_id: str | None, code: bool = False) -> dict:
    data = {
        "id": version.pk,
        "number": version.number,
        "active": version.pk == active_id,
        "createdAt": version.created_at,
        "author": version.author_name or None,
        "note": version.note,
    }
    if code:
        data["code"] = version.code
    return data


def schedule_payload(schedule: Schedule) -> dict:
    return {
        "id": schedule.pk,
        "loopId": schedule.loop_id,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "input": schedule.input,
        "enabled": schedule.enabled,
        "nextRunAt": schedule.next_run_at,
        "lastRunAt": schedule.last_run_at,
    }
