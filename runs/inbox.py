"""The inbox: runs waiting for a person (`step.ask`, `step.approve`), who may answer them, and
the list the inbox page and `GET /api/v1/approvals` show.

A run waiting for a person says so in its `pending` (runs.engine.waits): the step's id, when
the wait began (`since`, ISO 8601 in UTC with microseconds, so that the text sorts as the time
does), its assignees and, with `remind_after`/`escalate_after`, when it becomes overdue
(`overdueAt`) and whether a reminder or escalation went out (runs.approvals). The list reads
runs_run alone, through the partial index `run_waiting_person` (runs.models).
"""

import json
import re
from datetime import UTC, datetime, timedelta

from django.db.models import Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ROLE_RANK, Membership, Role
from runs.models import Run, RunStatus
from runs.selectors import invalid_filter, loop_id_for

PERSON_KINDS = ("input", "approval")
MAX_ASSIGNEES = 20
# A username as Django's default validator allows it.
ASSIGNEE = re.compile(r"^(role:(?P<role>[a-z]+)|user:(?P<user>[\w.@+-]{1,150}))$")
ASSIGNEE_FORMS = '"role:<owner|admin|editor|viewer>" or "user:<username>"'
NOBODY = "none"  # the assignee filter for items any editor may answer


def stamp(when: datetime) -> str:
    """A time as `pending` stores it: fixed width, so that comparing texts compares times."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


# --- Assignees ------------------------------------------------------------------------------


def parse_assignees(value, *, field: str = "assignee") -> list[str]:
    """`step.ask`/`step.approve`'s `assignee=`: one of ASSIGNEE_FORMS or a list of them, as a
    list without repeats. ValueError naming `field` for anything else."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or len(items) > MAX_ASSIGNEES:
        raise ValueError(
            f"{field} must be {ASSIGNEE_FORMS}, or a list of at most {MAX_ASSIGNEES} of them"
        )
    found = []
    for item in items:
        match = ASSIGNEE.match(item) if isinstance(item, str) else None
        if match is None:
            raise ValueError(f"{field}: {item!r} is not {ASSIGNEE_FORMS}")
        if match["role"] is not None and match["role"] not in Role.values:
            raise ValueError(f"{field}: {item!r} names no role; roles are {', '.join(Role.values)}")
        if item not in found:
            found.append(item)
    return found


def unknown_users(organization_id: str, assignees: list[str]) -> list[str]:
    """The `user:` assignees who are not members of the organization."""
    names = [a.removeprefix("user:") for a in assignees if a.startswith("user:")]
    if not names:
        return []
    members = set(
        Membership.objects.filter(
            organization_id=organization_id, user__username__in=names
        ).values_list("user__username", flat=True)
    )
    return [name for name in names if name not in members]


def assignee_label(assignee: str) -> str:
    """How a page names an assignee: "admins" for role:admin, the username for user:…"""
    kind, _, name = assignee.partition(":")
    return f"{name}s" if kind == "role" else name


def assignees_text(assignees: list[str]) -> str:
    return ", ".join(assignee_label(a) for a in assignees)


def may_answer(assignees: list[str], *, role: str, username: str) -> bool:
    """Whether a member may answer an item: anyone (who may act on runs) when it has no
    assignee; otherwise its assignees (`role:X`: members whose role includes X) and admins."""
    rank = ROLE_RANK[Role(role)]
    if not assignees or rank >= ROLE_RANK[Role.ADMIN]:
        return True
    for assignee in assignees:
        kind, _, name = assignee.partition(":")
        if kind == "user" and name == username:
            return True
        if kind == "role" and name in Role.values and rank >= ROLE_RANK[Role(name)]:
            return True
    return False


def refusal(pending: dict | None, *, role: str | None, username: str) -> str | None:
    """Why this member may not answer what a run waits for (None: they may). `role` None: not
    a member of the run's organization."""
    assignees = (pending or {}).get("assignees") or []
    if not assignees:
        return None
    if role is not None and may_answer(assignees, role=role, username=username):
        return None
    what = "question" if (pending or {}).get("kind") == "input" else "approval"
    return (
        f"This {what} is assigned to {assignees_text(assignees)}: only they or an admin may "
        "answer it."
    )


def member_role(organization_id: str, user_id) -> str | None:
    return (
        Membership.objects.filter(organization_id=organization_id, user_id=user_id)
        .values_list("role", flat=True)
        .first()
    )


def mine(*, role: str, username: str) -> list[str]:
    """The assignees that name this member: their user and every role theirs includes."""
    rank = ROLE_RANK[Role(role)]
    roles = [f"role:{r}" for r in Role.values if ROLE_RANK[Role(r)] <= rank]
    return [f"user:{username}", *roles]


# --- The list --------------------------------------------------------------------------------


def waiting_for_people(org) -> QuerySet:
    """The organization's runs waiting for a person, oldest wait first. The filter is the
    condition of the partial index `run_waiting_person`, and the order its columns (`since` is
    cast to text, a no-op on PostgreSQL, so that comparing it compares texts everywhere)."""
    return (
        Run.objects.filter(
            organization=org, status=RunStatus.WAITING, pending__kind__in=PERSON_KINDS
        )
        .annotate(since=Cast(KeyTextTransform("since", "pending"), TextField()))
        .order_by("since", "pk")
    )


def waiting_count(org) -> int:
    """How many runs of the organization wait for a person (one COUNT on the partial index)."""
    return waiting_for_people(org).count()


def filter_inbox(qs: QuerySet, org, *, loop: str | None = None, kind: str | None = None,
                 assignee: str | None = None, older_than: int | None = None,
                 me: list[str] | None = None) -> QuerySet:  # fmt: skip
    """The filters of the inbox and of GET /api/v1/approvals; Invalid (422) names a bad one.
    `assignee` is `role:…`, `user:…` or `none`; `me` (the page's "Assigned to me") is the list
    `mine()` gives."""
    if loop:
        qs = qs.filter(loop_id=loop_id_for(org, loop))
    if kind:
        if kind not in PERSON_KINDS:
            raise invalid_filter("kind", f"'{kind}' is not one of {', '.join(PERSON_KINDS)}")
        qs = qs.filter(pending__kind=kind)
    if assignee == NOBODY:
        qs = qs.filter(Q(pending__assignees=[]) | Q(pending__assignees__isnull=True))
    elif assignee:
        try:
            wanted = parse_assignees(assignee)
        except ValueError:
            raise invalid_filter(
                "assignee", f"'{assignee}' is not {ASSIGNEE_FORMS} or {NOBODY}"
            ) from None
        qs = qs.filter(_assigned_to(wanted))
    if me is not None:
        qs = qs.filter(_assigned_to(me))
    if older_than is not None:
        if older_than < 0:
            raise invalid_filter("olderThan", "must be a number of seconds >= 0")
        try:
            cutoff = timezone.now() - timedelta(seconds=older_than)
        except OverflowError:
            return qs.none()
        qs = qs.filter(since__lte=stamp(cutoff))
    return qs


def _assigned_to(assignees: list[str]) -> Q:
    """Items whose assignees include any of these. The JSON text of the list holds each one
    quoted, which a LIKE finds on every database (JSON containment is PostgreSQL's alone)."""
    wanted = Q()
    for assignee in assignees:
        wanted |= Q(pending__assignees__icontains=json.dumps(assignee))
    return wanted


def for_list(qs: QuerySet) -> QuerySet:
    """Only what an inbox row shows: the run's pending and its loop's name."""
    return qs.select_related("loop").only(
        "id", "organization_id", "loop_id", "status", "pending", "created_at",
        "loop__slug", "loop__name",
    )  # fmt: skip


INBOX_SORTS = {"since": "since"}  # for runs.selectors.page_runs: oldest wait first


# --- One item ------------------------------------------------------------------------------


def waiting_since(pending: dict) -> datetime | None:
    since = pending.get("since")
    return parse_datetime(since) if isinstance(since, str) else None


def is_overdue(pending: dict, now: datetime | None = None) -> bool:
    """A reminder or escalation went out, or the first of their times has passed."""
    if pending.get("overdue"):
        return True
    due = pending.get("overdueAt")
    due_at = parse_datetime(due) if isinstance(due, str) else None
    return due_at is not None and due_at <= (now or timezone.now())


def item_payload(run: Run, now: datetime | None = None) -> dict:
    """A run waiting for a person as GET /api/v1/approvals and the approval webhooks show it."""
    pending = run.pending or {}
    return {
        "runId": run.pk,
        "loopId": run.loop_id,
        "loopSlug": run.loop.slug,
        "stepId": pending.get("stepId"),
        "kind": pending.get("kind"),
        "prompt": pending.get("prompt"),
        "tool": pending.get("tool"),
        "toolInput": pending.get("toolInput"),
        "assignees": pending.get("assignees") or [],
        "waitingSince": waiting_since(pending),
        "overdue": is_overdue(pending, now),
    }
