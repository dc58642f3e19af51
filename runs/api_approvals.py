"""The approvals API (API.md "Operator control"): every run of the organization waiting for a
person, and decisions on many approvals at once. `full` tokens only; a token acts for its
organization, so it may decide any approval, whoever it is assigned to."""

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Query, Router, Schema

from accounts.audit import Actor
from loops_project.api_base import ERRORS_FULL, FullScopeAuth
from runs.approvals import MAX_DECISIONS, approvals_decide
from runs.inbox import INBOX_SORTS, filter_inbox, for_list, item_payload, waiting_for_people
from runs.selectors import page_runs

router = Router(tags=["approvals"], auth=FullScopeAuth())


class ApprovalOut(Schema):
    runId: str
    loopId: str
    loopSlug: str
    stepId: str | None
    kind: Literal["input", "approval"]
    prompt: str | None
    tool: Any = None
    toolInput: Any = None
    assignees: list[str] = Field(
        description='Who may answer: "role:<role>" (members whose role includes it) and '
        '"user:<username>"; admins always may. Empty: any editor.'
    )
    waitingSince: datetime | None
    overdue: bool = Field(
        description="The wait's remind_after or escalate_after has passed (its reminder or "
        "escalation webhook event went out, or is due)."
    )


class ApprovalList(Schema):
    data: list[ApprovalOut]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


class DecideIn(Schema):
    runIds: list[str] = Field(..., min_length=1, max_length=MAX_DECISIONS)
    action: Literal["approve", "reject"]
    reason: str | None = Field(None, max_length=2000)


class Skipped(Schema):
    runId: str
    reason: str


class Decided(Schema):
    decided: int
    skipped: list[Skipped]


class DecidedEnvelope(Schema):
    data: Decided


@router.get(
    "/approvals", response={200: ApprovalList, **ERRORS_FULL}, summary="Runs waiting for a person"
)
def list_approvals(
    request,
    loop: str | None = Query(None, description="Loop id or slug"),
    kind: str | None = Query(None, description="input or approval"),
    assignee: str | None = Query(
        None, description='"role:<role>", "user:<username>", or "none" (no assignee)'
    ),
    olderThan: int | None = Query(
        None, ge=0, le=10**9, description="Only waits that began at least this many seconds ago"
    ),
    limit: int = Query(10, description="1 to 100"),
    offset: int = Query(0, description="Rows to skip (0 to 1000000)"),
    cursor: str | None = Query(None, description="nextCursor of the previous page"),
):
    """Every run of the organization waiting for a person (step.ask: `input`, step.approve:
    `approval`), across all loops, the longest wait first. Unknown filter values answer 422
    naming the field."""
    org = request.auth.organization
    qs = filter_inbox(
        for_list(waiting_for_people(org)), org, loop=loop, kind=kind, assignee=assignee,
        older_than=olderThan,
    )  # fmt: skip
    rows, has_more, next_cursor = page_runs(
        qs, sort="since", limit=limit, offset=offset, cursor=cursor, sorts=INBOX_SORTS
    )
    return {
        "data": [item_payload(run) for run in rows],
        "limit": limit,
        "offset": offset,
        "hasMore": has_more,
        "nextCursor": next_cursor,
    }


@router.post(
    "/approvals/decide",
    response={200: DecidedEnvelope, **ERRORS_FULL},
    summary="Approve or reject many approvals",
)
def decide(request, payload: DecideIn):
    """Decide each listed run's approval with one reason. A run that is not waiting for an
    approval (or not the organization's) is skipped with the reason, not an error; each
    decision is audited (`approval.approve`, `approval.reject`)."""
    result = approvals_decide(
        organization=request.auth.organization, run_ids=payload.runIds, action=payload.action,
        reason=payload.reason, actor=Actor.from_request(request),
    )  # fmt: skip
    return {"data": result}
