"""Reading the audit log: its filters (the page's and the API's), one page of it, and the
retention that deletes entries older than LOOPS_AUDIT_RETENTION_DAYS."""

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ActorType, AuditEvent, Organization
from loops_project.errors import Invalid
from loops_project.timestamps import aware_datetime

AUDIT_SORTS = {"at": "at"}  # for runs.selectors.page_runs: newest first, keyset on (at, id)
PRUNE_BATCH = 1000


def _when(field: str, value: str):
    try:
        return aware_datetime(value)
    except ValueError as exc:
        raise Invalid(f"{field} must be an ISO 8601 date and time with a time zone: {exc}",
                      details={"field": field}) from None  # fmt: skip


def filter_audit(organization: Organization, *, action: str = "", actor_type: str = "",
                 object_id: str = "", after: str = "", before: str = "") -> QuerySet:  # fmt: skip
    """The organization's entries matching the filters; bad values name their field."""
    qs = AuditEvent.objects.filter(organization=organization)
    if action:
        # "loop" matches every loop.* action; "loop.deploy" that one.
        qs = (
            qs.filter(action=action)
            if "." in action
            else qs.filter(action__startswith=action + ".")
        )
    if actor_type:
        if actor_type not in ActorType.values:
            raise Invalid(f"actorType must be one of {', '.join(ActorType.values)}",
                          details={"field": "actorType"})  # fmt: skip
        qs = qs.filter(actor_type=actor_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    if after:
        qs = qs.filter(at__gte=_when("after", after))
    if before:
        qs = qs.filter(at__lt=_when("before", before))
    return qs


def audit_payload(event: AuditEvent) -> dict:
    return {
        "id": event.pk, "at": event.at,
        "actor": {"type": event.actor_type, "id": event.actor_id or None, "name": event.actor_name},
        "action": event.action, "object": {"type": event.object_type, "id": event.object_id},
        "details": event.details, "ip": event.ip,
    }  # fmt: skip


def prune_audit(now=None) -> int:
    """Delete entries older than the retention, a batch at a time; how many went."""
    days = settings.LOOPS_AUDIT_RETENTION_DAYS
    if not days:
        return 0  # kept for ever
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(
            AuditEvent.objects.filter(at__lt=cutoff).values_list("pk", flat=True)[:PRUNE_BATCH]
        )
        if not ids:
            return deleted
        deleted += AuditEvent.objects.filter(pk__in=ids).delete()[0]
