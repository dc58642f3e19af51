"""The runs list: filters, sort and keyset (cursor) pages, and the values lists carry."""

import base64
import json
from datetime import datetime

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast, Left
from django.utils.dateparse import parse_datetime

from accounts.models import ApiToken, Membership
from loops.access import loop_lookup_field
from loops.models import Loop
from loops_project.errors import Invalid
from loops_project.timestamps import aware_datetime
from runs.models import (
    CANCELLED_STEP_ERROR,
    Batch,
    LogEntry,
    Run,
    RunMode,
    RunStatus,
    Step,
    StepStatus,
    TriggerType,
)

SORTS = {
    "createdAt": "created_at",
    "startedAt": "started_at",
    "completedAt": "completed_at",
    "status": "status",
    "durationMs": "duration_ms",
}
NULLABLE = {"started_at", "completed_at", "duration_ms"}
DATETIME_SORTS = {"created_at", "started_at", "completed_at", "at"}
STEP_STATUS_FILTERS = {"failed", "rejected"}
MAX_LIMIT = 100
MAX_OFFSET = 1_000_000


def invalid_filter(field: str, message: str) -> Invalid:
    """A list filter's bad value: 422 invalid_filter naming the field."""
    return Invalid(f"Invalid {field}: {message}", code="invalid_filter", details={"field": field})


def loop_id_for(org, loop: str) -> str:
    """The id of the organization's loop named by id or slug, for a `loop` filter."""
    loop_id = (
        Loop.objects.filter(organization=org, **{loop_lookup_field(loop): loop})
        .values_list("pk", flat=True)
        .first()
    )
    if loop_id is None:
        raise invalid_filter("loop", f"no loop '{loop}' in this organization")
    return loop_id


def _choice(field: str, value: str, allowed) -> str:
    if value not in allowed:
        raise invalid_filter(field, f"'{value}' is not one of {', '.join(sorted(allowed))}")
    return value


def _when(field: str, value: str) -> datetime:
    try:
        return aware_datetime(value)
    except ValueError as exc:
        raise invalid_filter(field, str(exc)) from None


def filter_runs(qs: QuerySet, org, *, status=None, loop=None, trigger_type=None, mode=None,
                batch=None, created_after=None, created_before=None, step_status=None,
                triggered_by=None, has_errors: bool = False) -> QuerySet:  # fmt: skip
    if status:
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        if not statuses:
            raise invalid_filter("status", "give one or more statuses separated by commas")
        for s in statuses:
            _choice("status", s, RunStatus.values)
        qs = qs.filter(status__in=statuses)
    if loop:
        qs = qs.filter(loop_id=loop_id_for(org, loop))
    if trigger_type:
        qs = qs.filter(trigger_type=_choice("triggerType", trigger_type, TriggerType.values))
    if mode:
        qs = qs.filter(mode=_choice("mode", mode, RunMode.values))
    if batch:
        if not Batch.objects.filter(organization=org, pk=batch).exists():
            raise invalid_filter("batch", f"no batch '{batch}' in this organization")
        qs = qs.filter(batch_id=batch)
    if created_after:
        qs = qs.filter(created_at__gte=_when("createdAfter", created_after))
    if created_before:
        qs = qs.filter(created_at__lt=_when("createdBefore", created_before))
    if step_status:
        _choice("stepStatus", step_status, STEP_STATUS_FILTERS)
        qs = qs.filter(Exists(Step.objects.filter(run=OuterRef("pk"), status=step_status)))
    if has_errors:
        qs = qs.filter(
            Q(status=RunStatus.FAILED) | Exists(_failed_steps().filter(run=OuterRef("pk")))
        )
    if triggered_by:
        qs = qs.filter(**_triggered_by(org, triggered_by))
    return qs


def _triggered_by(org, ident: str) -> dict:
    """A token of the organization (by id) or one of its members (by id or username)."""
    if ApiToken.objects.filter(organization=org, pk=ident).exists():
        return {"triggered_by_token_id": ident}
    members = Membership.objects.filter(organization=org)
    if ident.isdigit() and len(ident) < 19:
        members = members.filter(Q(user__username=ident) | Q(user_id=int(ident)))
    else:
        members = members.filter(user__username=ident)
    user_id = members.values_list("user_id", flat=True).first()
    if user_id is None:
        raise invalid_filter("triggeredBy", f"no token or member '{ident}' in this organization")
    return {"triggered_by_user_id": user_id}


def _encode_cursor(sort: str, value, pk: str) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, field: str):
    """(sort value, id) of the last run of the previous page; 422 for anything else."""
    bad = invalid_filter("cursor", "not a cursor this API gave out for this sort")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        given_sort, value, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError):
        raise bad from None
    if given_sort != sort or not isinstance(pk, str):
        raise bad
    if value is None:
        return None, pk
    if field in DATETIME_SORTS:
        try:
            value = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:
            value = None
    elif field == "duration_ms":
        value = value if isinstance(value, int) and 0 <= value < 2**62 else None
    elif not isinstance(value, str):
        value = None
    if value is None:
        raise bad
    return value, pk


def page_runs(qs: QuerySet, *, sort: str = "-createdAt", limit: int = 10, offset: int = 0,
              cursor: str | None = None, sorts: dict[str, str] = SORTS,
              ) -> tuple[list, bool, str | None]:  # fmt: skip
    """One page of runs (or of any list whose `sorts` name its API sort keys' fields):
    (rows, hasMore, nextCursor). Cursor pages never repeat or skip a row while new rows
    arrive, because they continue from the last (sort value, id) seen."""
    if limit < 1 or limit > MAX_LIMIT:
        raise invalid_filter("limit", f"must be between 1 and {MAX_LIMIT}")
    if offset < 0 or offset > MAX_OFFSET:
        raise invalid_filter(
            "offset", f"must be between 0 and {MAX_OFFSET} (use cursor for deep pages)"
        )
    desc = sort.startswith("-")
    name = sort.lstrip("-")
    if name not in sorts:
        raise invalid_filter(
            "sort", f"'{sort}' is not one of {', '.join(sorts)} (with - for descending)"
        )
    field = sorts[name]
    if field in NULLABLE:
        primary = F(field).desc(nulls_last=True) if desc else F(field).asc(nulls_last=True)
    else:
        primary = F(field).desc() if desc else F(field).asc()
    qs = qs.order_by(primary, "-pk" if desc else "pk")
    if cursor:
        value, pk = _decode_cursor(cursor, sort, field)
        op, id_op = ("lt", "lt") if desc else ("gt", "gt")
        if value is None:
            after = Q(**{f"{field}__isnull": True, f"pk__{id_op}": pk})
        else:
            after = Q(**{f"{field}__{op}": value}) | Q(**{field: value, f"pk__{id_op}": pk})
            if field in NULLABLE:
                after |= Q(**{f"{field}__isnull": True})
            else:
                # Redundant, but it lets the database start the index scan at the cursor
                # instead of filtering every row before it (deep pages stay fast).
                after &= Q(**{f"{field}__{'lte' if desc else 'gte'}": value})
        qs = qs.filter(after)
    # The page's ids first, on plain columns; then its rows: whatever the list computes per
    # row (without_values' heads of each input and output) is computed for the page only,
    # not for every row the database sorts or skips on its way to it.
    ids = list(qs.values_list("pk", flat=True)[offset : offset + limit + 1])
    order = {pk: n for n, pk in enumerate(ids)}
    rows = sorted(qs.filter(pk__in=ids[:limit]), key=lambda row: order[row.pk])
    has_more = len(ids) > limit
    last = rows[-1] if has_more and rows else None
    next_cursor = _encode_cursor(sort, getattr(last, field), last.pk) if last else None
    return rows, has_more, next_cursor


# --- Values in lists ------------------------------------------------------------------------

LIST_VALUES = ("input", "output")


def without_values(qs: QuerySet) -> QuerySet:
    """Runs for a list. Their input and output are not loaded: the database sends the head
    of each one's JSON text instead, one character longer than LOOPS_LIST_PREVIEW_CHARS (so
    a longer value is known to be longer), as `input_head` and `output_head`. The web process
    never receives a large value whole; the database still reads it (PostgreSQL: about 4 ms
    per MiB of jsonb, measured), so a page costs at most its rows times the input and output
    limits. Program texts (a test run's draft, its version's code) are not loaded either."""
    length = settings.LOOPS_LIST_PREVIEW_CHARS + 1
    return qs.defer(*LIST_VALUES, "test_code", "version__code").annotate(
        **{f"{name}_head": Left(Cast(name, TextField()), length) for name in LIST_VALUES}
    )


def value_head(run: Run, name: str) -> tuple[str | None, bool]:
    """The start of a run's input or output as JSON text (None for no value), and whether the
    value is longer than LOOPS_LIST_PREVIEW_CHARS: from without_values(), or from the value
    itself when the run was loaded whole."""
    limit = settings.LOOPS_LIST_PREVIEW_CHARS
    head = getattr(run, f"{name}_head", None)
    if head is None and name not in run.get_deferred_fields():
        value = getattr(run, name)
        head = None if value is None else json.dumps(value, ensure_ascii=False)
    if head is None:
        return None, False
    return head[:limit], len(head) > limit


def list_value(run: Run, name: str) -> tuple:
    """(value, preview, truncated) for a list: the value whole when its JSON is at most
    LOOPS_LIST_PREVIEW_CHARS long, else no value and a preview of that length."""
    if name not in run.get_deferred_fields():
        return getattr(run, name), None, False  # loaded whole: a single run's answer
    head, truncated = value_head(run, name)
    if truncated:
        return None, head, True
    return (None if head is None else json.loads(head)), None, False


def _failed_steps() -> QuerySet:
    """Steps that failed of an error of their own (not by their run's cancellation)."""
    return Step.objects.filter(status=StepStatus.FAILED).exclude(error=CANCELLED_STEP_ERROR)


def run_log_tail(run: Run, lines: int) -> tuple[list[LogEntry], int]:
    """The run's last `lines` log entries, oldest first, and how many it has in all."""
    qs = LogEntry.objects.filter(run=run)
    tail = list(qs.select_related("step").order_by("-time", "-id")[:lines])
    total = len(tail) if len(tail) < lines else qs.count()
    return tail[::-1], total
