"""The audit log over HTTP (API.md "Operator control"): `GET /api/v1/audit`."""

from datetime import datetime
from typing import Any

from ninja import Query, Router, Schema

from accounts.audit_log import AUDIT_SORTS, audit_payload, filter_audit
from loops_project.api_base import ERRORS_FULL, FullScopeAuth
from runs.selectors import page_runs

router = Router(tags=["audit"], auth=FullScopeAuth())


class ActorOut(Schema):
    type: str
    id: str | None
    name: str


class AuditObjectOut(Schema):
    type: str
    id: str


class AuditEventOut(Schema):
    id: str
    at: datetime
    actor: ActorOut
    action: str
    object: AuditObjectOut
    details: Any
    ip: str | None


class AuditList(Schema):
    data: list[AuditEventOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


@router.get("/audit", response={200: AuditList, **ERRORS_FULL}, summary="List the audit log")
def list_audit(
    request,
    action: str | None = Query(
        None, description="A dotted action (loop.deploy) or its prefix (loop)"
    ),
    actorType: str | None = Query(None, description="user, token or system"),
    objectId: str | None = Query(None, description="The id of the object acted on"),
    after: str | None = Query(None, description="ISO 8601 with time zone (inclusive)"),
    before: str | None = Query(None, description="ISO 8601 with time zone (exclusive)"),
    limit: int = Query(10, description="1 to 100"),
    offset: int = Query(0, description="Rows to skip (0 to 1000000)"),
    cursor: str | None = Query(None, description="nextCursor of the previous page"),
):
    """Operator actions, newest first: who (a user, a token or a command), what, on which
    object, when, from which address, and the details (before/after where something changed)."""
    qs = filter_audit(
        request.auth.organization, action=action or "", actor_type=actorType or "",
        object_id=objectId or "", after=after or "", before=before or "",
    )  # fmt: skip
    rows, has_more, next_cursor = page_runs(
        qs, sort="-at", limit=limit, offset=offset, cursor=cursor, sorts=AUDIT_SORTS
    )
    return {
        "data": [audit_payload(e) for e in rows], "limit": limit, "offset": offset,
        "hasMore": has_more, "nextCursor": next_cursor,
    }  # fmt: skip
