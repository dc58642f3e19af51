"""Webhooks: a signed JSON POST of the run on each status change, retried with backoff, and
what an admin does with a webhook (create, edit, disable, delete, send a test event).

A delivery is a row, due at its next_attempt_at. The worker clusters of its queue send what is
due (runs.senders), a few deliveries of each organization at a time, beside the turns of runs
and not in their queue: an organization with many webhooks, or slow receivers, delays its own
deliveries, not other organizations' runs or deliveries."""

import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from functools import cache

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.limits import check_room
from accounts.models import Organization
from loops.models import Loop
from loops_project import sql
from loops_project.errors import Conflict, Invalid
from runs import dispatch, outbound
from runs.models import (
    DeliveryStatus,
    Run,
    RunStatus,
    Webhook,
    WebhookDelivery,
)
from runs.schemas import run_payload
from runs.state import Change

SIGNATURE_HEADER = "X-Loops-Signature"
# A run waiting for a person is overdue (step.ask/step.approve's remind_after, escalate_after).
APPROVAL_EVENTS = ("approval.reminder", "approval.escalated")
EVENT_NAMES = {f"run.{s}" for s in RunStatus.values} | set(APPROVAL_EVENTS)
# Not a status change: what "Send test event" sends, so a receiver can be checked at any time.
TEST_EVENT = "ping"
DELIVERY_TIMEOUT_SECONDS = 10
ATTEMPT_GRACE_SECONDS = 20  # beyond its timeout, before an attempt's claim runs out
URL_CHECK_SECONDS = 3  # the page that saves a URL waits this long at most to resolve its host
DISABLED_ERROR = "Not sent: the webhook is disabled."


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _clean(url: str, events: list[str] | None) -> list[str]:
    """The events as stored (each "run.<status>" or "approval.<…>", once); Invalid naming the
    field if the URL or an event is not one."""
    # A status alone ("failed") names the same event as "run.failed".
    events = list(dict.fromkeys(e if "." in str(e) else f"run.{e}" for e in events or []))
    unknown = [e for e in events if e not in EVENT_NAMES]
    if unknown:
        raise Invalid(
            f"unknown events: {', '.join(map(str, unknown))}; use {', '.join(sorted(EVENT_NAMES))}",
            code="invalid_events", details={"field": "events"},
        )  # fmt: skip
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise Invalid(
            "url must be an http or https URL", code="invalid_url", details={"field": "url"}
        ) from None
    return events


def _check_loop(organization_id: str, loop: Loop | None) -> None:
    if loop is not None and loop.organization_id != organization_id:
        raise Invalid("the loop belongs to another organization", details={"field": "loop"})


def _audit(actor: Actor | None, webhook: Webhook, action: str, details: dict) -> None:
    if actor is not None:
        record(organization=webhook.organization_id, actor=actor, action=action,
               object_type="webhook", object_id=webhook.pk, details=details)  # fmt: skip


def _shown(webhook: Webhook) -> dict:
    return {"url": webhook.url, "events": webhook.events, "loop": webhook.loop_id,
            "active": webhook.active}  # fmt: skip


@transaction.atomic
def webhook_create(
    *, organization: Organization, url: str, events: list[str] | None = None,
    loop: Loop | None = None, actor: Actor | None = None,
) -> Webhook:  # fmt: skip
    events = _clean(url, events)
    _check_loop(organization.pk, loop)
    check_room(
        Webhook.objects.filter(organization=organization),
        settings.LOOPS_MAX_WEBHOOKS_PER_ORG,
        "webhooks",
        hint="delete one first (one webhook may take every event of every loop).",
    )
    webhook = Webhook.objects.create(
        organization=organization, loop=loop, url=url, events=events,
        secret="whsec_" + secrets.token_urlsafe(24),
    )  # fmt: skip
    _audit(actor, webhook, "webhook.create", _shown(webhook))
    return webhook


@transaction.atomic
def webhook_update(
    *, webhook: Webhook, url: str, events: list[str] | None, loop: Loop | None,
    actor: Actor | None = None,
) -> Webhook:  # fmt: skip
    """Change where a webhook posts and what for; its secret and deliveries stay."""
    events = _clean(url, events)
    _check_loop(webhook.organization_id, loop)
    before = _shown(webhook)
    webhook.url, webhook.events, webhook.loop = url, events, loop
    webhook.save(update_fields=["url", "events", "loop"])
    _audit(actor, webhook, "webhook.update", {"before": before, "after": _shown(webhook)})
    return webhook


@transaction.atomic
def webhook_set_active(*, webhook: Webhook, active: bool, actor: Actor | None = None) -> Webhook:
    """Enable or disable a webhook. A disabled one gets no new deliveries, and the attempts of
    those already queued are not made (runs.webhooks.deliver)."""
    changed = webhook.active != active
    webhook.active = active
    webhook.save(update_fields=["active"])
    if changed:
        _audit(actor, webhook, "webhook.enable" if active else "webhook.disable", _shown(webhook))
    return webhook


@transaction.atomic
def webhook_delete(*, webhook: Webhook, actor: Actor | None = None) -> None:
    """Delete a webhook with its deliveries."""
    _audit(actor, webhook, "webhook.delete", _shown(webhook))
    webhook.delete()


def webhook_send_test(*, webhook: Webhook) -> WebhookDelivery:
    """Queue a test event (`ping`) to the webhook, delivered, signed and recorded like any
    other delivery, whatever events it is subscribed to."""
    if not webhook.active:
        raise Conflict("The webhook is disabled: enable it to send a test event.")
    data = {"webhookId": webhook.pk, "url": webhook.url, "events": webhook.events,
            "loopId": webhook.loop_id, "sentAt": timezone.now()}  # fmt: skip
    payload = json.loads(json.dumps({"event": TEST_EVENT, "data": data}, cls=DjangoJSONEncoder))
    return WebhookDelivery.objects.create(
        webhook=webhook, event=TEST_EVENT, payload=payload, queue=dispatch.queue_key()
    )


def webhook_url_refusal(url: str) -> str | None:
    """Why a delivery to `url` would be refused if it were made now, in the outbound guard's
    words (the host does not resolve, or resolves to a loopback, private or other non-public
    address), or None. The guard decides again at each attempt: DNS may change meanwhile."""
    try:
        outbound.pin_target(url, outbound.Deadline.after(URL_CHECK_SECONDS, "the URL check"))
    except outbound.TargetRefused as exc:
        return str(exc)
    except (outbound.OutboundError, httpcore.TimeoutException):
        return None  # a slow name server is no verdict on the URL
    return None


@cache
def _has_webhooks_sql() -> str:
    hook = sql.table(Webhook)
    return (
        f"SELECT EXISTS (SELECT 1 FROM {hook} WHERE {sql.column(Webhook, 'organization')} = %s "  # noqa: S608 - model names; the value is a parameter
        f"AND {sql.column(Webhook, 'active')})"
    )


def organization_has_webhooks(organization_id: str) -> bool:
    """Whether any webhook of the organization is on (one prepared statement: it is asked on
    every trigger that did not already find out)."""
    return bool(sql.fetch_one(_has_webhooks_sql(), [organization_id])[0])


def queue_deliveries_of(changes: list[Change]) -> None:
    """A delivery for each webhook subscribed to each change (run.<status>), queued."""
    organizations = {change.organization_id for change in changes}
    hooks = list(Webhook.objects.filter(organization_id__in=organizations, active=True))
    wanted = [
        (change, hook)
        for change in changes
        for hook in hooks
        if hook.organization_id == change.organization_id
        and hook.loop_id in (None, change.loop_id)
        and (not hook.events or f"run.{change.status}" in hook.events)
    ]
    if not wanted:
        return
    runs = Run.objects.select_related("loop", "version").in_bulk({c.run_id for c, _ in wanted})
    deliveries = []
    for change, hook in wanted:
        event = f"run.{change.status}"
        # Stored as JSON the way the API writes it (timestamps as ISO 8601 strings); the run as
        # it is now, with the status of the change it announces.
        data = {**run_payload(runs[change.run_id]), "status": change.status}
        payload = json.loads(json.dumps({"event": event, "data": data}, cls=DjangoJSONEncoder))
        queue = runs[change.run_id].queue
        deliveries.append(
            WebhookDelivery(
                webhook=hook, run_id=change.run_id, event=event, payload=payload, queue=queue
            )
        )
    WebhookDelivery.objects.bulk_create(deliveries)


def queue_event(*, run: Run, event: str, data: dict) -> int:
    """A delivery of an event that is not a status change (APPROVAL_EVENTS) for each active
    webhook of the run's organization subscribed to it, queued in the caller's transaction;
    returns how many."""
    hooks = Webhook.objects.filter(organization_id=run.organization_id, active=True).filter(
        Q(loop__isnull=True) | Q(loop_id=run.loop_id)
    )
    payload = json.loads(json.dumps({"event": event, "data": data}, cls=DjangoJSONEncoder))
    deliveries = [
        WebhookDelivery(webhook=hook, run_id=run.pk, event=event, payload=payload, queue=run.queue)
        for hook in hooks
        if not hook.events or event in hook.events
    ]
    WebhookDelivery.objects.bulk_create(deliveries)
    return len(deliveries)


def due_deliveries(*, limit: int, per_organization: int, now=None) -> list[tuple[str, str]]:
    """Up to `limit` deliveries of this queue that are due, as (id, organization id): each
    organization's oldest `per_organization` first, taking turns, so that one organization's
    backlog does not hold back another's deliveries. Nothing is claimed (runs.webhooks.deliver
    claims each).

    The senders ask at every clock round and after every attempt, so the answer costs the same
    whatever the backlog: each webhook's oldest due deliveries are read from the index
    `delivery_due_hook` (a few rows each), never the whole backlog sorted."""
    now = now or timezone.now()
    queue = dispatch.queue_key()
    due = WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, queue=queue, next_attempt_at__lte=now
    )
    # Most rounds find nothing: one look at the partial index.
    if not due.exists():
        return []
    by_organization: dict[str, list[tuple]] = {}
    hooks = _hooks_with_pending(queue)
    for chunk in range(0, len(hooks), HOOKS_PER_STATEMENT):
        for row in _oldest_due(queue, hooks[chunk : chunk + HOOKS_PER_STATEMENT], now,
                               per_organization):  # fmt: skip
            by_organization.setdefault(row[3], []).append(row)
    ranked = []
    for rows in by_organization.values():
        rows.sort(key=lambda row: (row[2], row[0]))  # oldest first
        ranked += [(nth, due_at, pk, org) for nth, (pk, _, due_at, org) in enumerate(rows)]
    ranked = [row for row in ranked if row[0] < per_organization]
    ranked.sort()
    return [(pk, org) for _, _, pk, org in ranked[:limit]]


HOOKS_PER_STATEMENT = 200  # 5 parameters each, within SQLite's 32,766


def _hooks_with_pending(queue: str) -> list[str]:
    """The webhooks with pending deliveries in `queue`: one index probe each (a skip scan of
    delivery_due_hook), however many deliveries they have."""
    with connection.cursor() as cursor:
        cursor.execute(_hooks_sql(), [queue, queue])
        return [hook for (hook,) in cursor.fetchall()]


@cache
def _hooks_sql() -> str:
    d = sql.table(WebhookDelivery)
    c = lambda name: sql.column(WebhookDelivery, name)  # noqa: E731
    pending = f"{c('status')} = '{DeliveryStatus.PENDING}' AND {c('queue')} = %s"
    return (
        f"WITH RECURSIVE hooks(id) AS (SELECT MIN({c('webhook')}) FROM {d} WHERE {pending} "  # noqa: S608
        f"UNION ALL SELECT (SELECT MIN({c('webhook')}) FROM {d} WHERE {pending} "
        f"AND {c('webhook')} > hooks.id) FROM hooks WHERE hooks.id IS NOT NULL) "
        "SELECT id FROM hooks WHERE id IS NOT NULL"
    )


def _oldest_due(queue: str, hooks: list[str], now, count: int) -> list[tuple]:
    """Each webhook's `count` oldest due deliveries: (id, webhook id, due at, organization
    id)."""
    if not hooks:
        return []
    branch = _oldest_due_sql()
    statement = " UNION ALL ".join([branch] * len(hooks))
    params = [value for hook in hooks for value in (queue, hook, now, count)]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


@cache
def _oldest_due_sql() -> str:
    d, w = sql.table(WebhookDelivery), sql.table(Webhook)
    c = lambda name: sql.column(WebhookDelivery, name)  # noqa: E731
    return (
        f"SELECT * FROM (SELECT d.{c('id')}, d.{c('webhook')}, d.{c('next_attempt_at')}, "  # noqa: S608
        f"w.{sql.column(Webhook, 'organization')} FROM {d} d "
        f"JOIN {w} w ON w.{sql.column(Webhook, 'id')} = d.{c('webhook')} "
        f"WHERE d.{c('status')} = '{DeliveryStatus.PENDING}' AND d.{c('queue')} = %s "
        f"AND d.{c('webhook')} = %s AND d.{c('next_attempt_at')} <= %s "
        f"ORDER BY d.{c('next_attempt_at')} LIMIT %s) AS oldest"
    )


def _claim(delivery_id: str, now) -> bool:
    """Take the delivery's next attempt, if it is due: it is pending and its next_attempt_at
    has come. The claim moves next_attempt_at past the attempt's longest time, so that a sender
    that dies mid-attempt leaves it due again then (a receiver may then get it twice; the
    X-Loops-Delivery header names it), and a second sender claims nothing meanwhile."""
    lease = timedelta(seconds=DELIVERY_TIMEOUT_SECONDS + ATTEMPT_GRACE_SECONDS)
    return bool(
        WebhookDelivery.objects.filter(
            pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
        ).update(next_attempt_at=now + lease)
    )


def deliver(delivery_id: str) -> str:
    """One attempt of a delivery, recorded on its row (attempt count, status code, response
    excerpt, error, time): one row per event, in its latest state. A failed attempt leaves the
    delivery pending and schedules the next one after an exponential backoff, until
    LOOPS_WEBHOOK_MAX_ATTEMPTS. A delivery of a disabled webhook is not sent."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or not _claim(delivery_id, timezone.now()):
        return "nothing to do"
    this = WebhookDelivery.objects.filter(pk=delivery.pk)
    if not delivery.webhook.active:
        this.update(status=DeliveryStatus.FAILED, error=DISABLED_ERROR, next_attempt_at=None)
        return "webhook disabled"
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Loops-Webhooks/1",
        SIGNATURE_HEADER: sign(delivery.webhook.secret, body),
        "X-Loops-Event": delivery.event,
        "X-Loops-Delivery": delivery.pk,
    }
    attempt = delivery.attempt + 1
    status_code, excerpt, error = None, "", ""
    try:
        # The same byte limit and one total deadline as step.http: a receiver that answers
        # slowly or at length cannot hold the worker.
        reply = outbound.request(
            "POST", delivery.webhook.url, headers=headers, content=body,
            deadline=outbound.Deadline.after(DELIVERY_TIMEOUT_SECONDS),
        )  # fmt: skip
        status_code, excerpt = reply.status_code, reply.text[:1000]
        ok = 200 <= reply.status_code < 300
        if not ok:
            error = f"HTTP {reply.status_code}"
    except (outbound.OutboundError, httpx.HTTPError) as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"[:1000]
    now = timezone.now()
    outcome = {"attempt": attempt, "status_code": status_code, "response_excerpt": excerpt,
               "error": error, "delivered_at": now}  # fmt: skip
    if ok or attempt >= settings.LOOPS_WEBHOOK_MAX_ATTEMPTS:
        this.update(**outcome, status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
                    next_attempt_at=None)  # fmt: skip
        return "delivered" if ok else f"attempt {attempt} failed"
    delay = settings.LOOPS_WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    this.update(**outcome, status=DeliveryStatus.PENDING,
                next_attempt_at=now + timedelta(seconds=delay))  # fmt: skip
    return f"attempt {attempt} failed"


@transaction.atomic
def delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a recorded delivery again now (its row records the new attempt), without waiting
    for the backoff of a retry."""
    if not delivery.webhook.active:
        raise Conflict("The webhook is disabled: enable it to redeliver.")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, next_attempt_at=timezone.now(),
        queue=delivery.run.queue if delivery.run_id else dispatch.queue_key(),
    )  # fmt: skip
    delivery.refresh_from_db()
    return delivery
